"""Teach a small model the demo's tool-call format with a LoRA adapter (``asa train-demo-model``).

ASA steers a model's existing choice between calling a tool and answering;
it cannot create a skill the model lacks. SmolLM2-135M-Instruct, the only
model that runs offline here, never writes a tool call, so the offline demo
showed nothing. This module makes a *stand-in* tool caller from it, with the
ecosystem's LoRA library (``peft``) and nothing but synthetic data:

- **Tool requests** for the four tools of the prompt format (calculator,
  python_interpreter, web_search, translator), filled from templates with a
  seeded RNG and answered with ``<start>{"name": ..., "arguments": {...}}<end>``
  in the prompt's own markers.
- **Plain requests** (poems, advice, explanations, including ones that use
  math/code/search words but need no tool) answered with the *base model's
  own greedy answer* to the same prompt (self-distillation), so its ordinary
  behaviour stays.

No Alpaca row is training data (the demo evaluates on Alpaca). Prompts are
rendered exactly as the demo renders them (:func:`asa_lib.prompts.render_prompt`),
the loss covers the answer tokens only, and the recipe is fixed in
:class:`Recipe`. Its figures on the synthetic validation set (never on an
Alpaca split) are written beside the adapter in ``training.json`` together
with the seed, data sizes, losses, the adapter's sha256 and library versions.

Loading (``model.adapter`` in params) merges the adapter into the base
weights (:func:`merge_adapter`), so hooks, extraction and steering see an
ordinary model.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asa_lib.demo.functions import HELD_OUT, SUBJECTS
from asa_lib.demo.synthetic import Example, function_requests, synthetic_requests
from asa_lib.files import library_versions, write_json
from asa_lib.model.load import LoadedModel
from asa_lib.model.lora import ADAPTER_FILE, RECORD_FILE, peft_version, sha256_file
from asa_lib.params import PromptParams
from asa_lib.prompts import prompt_token_ids, render_prompts, tools_for
from asa_lib.tools import CallMarkers, Score, call_payload, parse_calls, score_output


@dataclass
class Recipe:
    """Everything that decides the adapter. Fixed here; the figures are in ``training.json``."""

    seed: int = 0
    # the prompt format's four tools (the Alpaca demo's tool list)
    n_tool_train: int = 64  # per split: tool requests, spread over the tools
    n_plain_train: int = 64  # plain requests (self-distilled answers)
    n_tool_valid: int = 24
    n_plain_valid: int = 24
    # synthetic functions listed with each request (asa_lib.demo.functions); valid: held out
    n_fn_tool_train: int = 256  # requests one listed function answers
    n_fn_plain_train: int = 160  # requests no listed function answers (self-distilled answers)
    max_functions: int = 4  # functions listed per request: 1 .. this (BFCL's rows list 1-4)
    n_fn_tool_valid: int = 48
    n_fn_plain_valid: int = 48
    distill_max_new_tokens: int = 40  # length of the base model's own answers
    rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: list[str] | str = field(
        default_factory=lambda: ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )
    lr: float = 7e-4
    epochs: int = 1
    batch_size: int = 8
    max_steps: int | None = None  # None: epochs x batches (tests set a few steps)
    eval_max_new_tokens: int = 96


def _prompts(lm: LoadedModel, pp: PromptParams, examples: list[Example]) -> list[str]:
    """Each example rendered as the demo renders it, with its own tools (None: ``prompt.tools``)."""
    return render_prompts(lm.tokenizer, pp, [e.text for e in examples], [e.tools for e in examples])


def _distill(
    lm: LoadedModel, pp: PromptParams, examples: list[Example], max_new_tokens: int
) -> None:
    """Fill the plain requests' answers with the base model's own greedy answers."""
    from asa_lib.engine.generate import GenerationSettings, generate_all

    plain = [e for e in examples if e.call is None]
    if not plain:
        return
    outs, _ = generate_all(
        lm,
        _prompts(lm, pp, plain),
        GenerationSettings(max_new_tokens, 16, pp),
        desc="self-distillation",
    )
    for e, o in zip(plain, outs):
        e.answer = o


def _encode(
    lm: LoadedModel, pp: PromptParams, examples: list[Example]
) -> list[tuple[list[int], int]]:
    """(prompt + answer token ids, number of prompt tokens) per example."""
    tok = lm.tokenizer
    out = []
    for p_ids, e in zip(prompt_token_ids(tok, _prompts(lm, pp, examples)), examples):
        answer = e.answer
        if e.call is not None:  # a tool call ends the turn
            answer += tok.eos_token
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        out.append((p_ids + a_ids, len(p_ids)))
    return out


def _batch(items: list[tuple[list[int], int]], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels); labels cover the answer tokens only."""
    T = max(len(x) for x, _ in items)
    ids = torch.full((len(items), T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (x, n_prompt) in enumerate(items):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, n_prompt : len(x)] = torch.tensor(x[n_prompt:])
    return ids, mask, labels


@torch.no_grad()
def _mean_loss(model, items, pad_id: int, batch_size: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(items), batch_size):
        ids, mask, labels = _batch(items[s : s + batch_size], pad_id)
        n = int((labels[:, 1:] != -100).sum())
        out = model(
            input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)
        )
        total += float(out.loss) * n
        count += n
    return total / max(count, 1)


def _rates(rows: list[tuple[Example, str, Score]], markers: CallMarkers) -> dict:
    tool = [(e, o, sc) for e, o, sc in rows if e.call is not None]
    plain = [sc for e, _, sc in rows if e.call is None]

    def share(xs) -> float:
        return float(np.mean(xs)) if xs else 0.0

    def calls(o: str):
        payload = call_payload(o, markers)
        return parse_calls(payload) if payload is not None else None

    right, exact = [], []
    for e, o, sc in tool:
        got = calls(o) if sc.valid else None
        right.append(bool(got) and got[0].name == e.call["name"])
        exact.append(
            bool(got)
            and len(got) == 1
            and got[0].name == e.call["name"]
            and got[0].arguments == e.call["arguments"]
        )
    return {
        "tool_requests": len(tool),
        "plain_requests": len(plain),
        "trigger_rate_tool": share([sc.triggered for _, _, sc in tool]),
        "trigger_rate_plain": share([sc.triggered for sc in plain]),
        "valid_call_rate_tool": share([sc.valid for _, _, sc in tool]),
        "right_tool_rate": share(right),
        "exact_call_rate": share(exact),
    }


def evaluate_tool_use(
    lm: LoadedModel, pp: PromptParams, examples: list[Example], max_new_tokens: int
) -> dict[str, dict]:
    """Per group of the mix: trigger rates and call validity of ``lm`` (greedy).

    ``valid_call_rate_tool``: the call parses, names a listed function and carries its
    required arguments (:func:`asa_lib.tools.score_output`, against the request's own tools);
    ``right_tool_rate``: a valid call names the function the request needs;
    ``exact_call_rate``: the one call is the expected call, arguments and values equal.
    """
    from asa_lib.engine.generate import GenerationSettings, generate_all

    outs, _ = generate_all(
        lm,
        _prompts(lm, pp, examples),
        GenerationSettings(max_new_tokens, 16, pp),
        desc="synthetic validation",
    )
    markers = CallMarkers.of(pp)
    rows = [
        (e, o, score_output(o, markers, tools_for(pp, e.tools))) for e, o in zip(examples, outs)
    ]
    groups = sorted({e.group for e in examples})
    return {g: _rates([x for x in rows if x[0].group == g], markers) for g in groups}


def training_mix(
    pp: PromptParams, recipe: Recipe, rng: random.Random, seen: set[str]
) -> tuple[list[Example], list[Example]]:
    """The recipe's training and validation requests (validation functions: held-out subjects)."""
    train = synthetic_requests(pp, recipe.n_tool_train, recipe.n_plain_train, rng, seen)
    train += function_requests(
        pp,
        recipe.n_fn_tool_train,
        recipe.n_fn_plain_train,
        rng,
        seen,
        "train",
        recipe.max_functions,
    )
    valid = synthetic_requests(pp, recipe.n_tool_valid, recipe.n_plain_valid, rng, seen)
    valid += function_requests(
        pp,
        recipe.n_fn_tool_valid,
        recipe.n_fn_plain_valid,
        rng,
        seen,
        "held_out",
        recipe.max_functions,
    )
    rng.shuffle(train)
    return train, valid


def mix_summary(examples: list[Example]) -> dict:
    """What a set of requests holds: tool and plain requests per group, the functions listed."""
    out: dict = {"tool": 0, "plain": 0, "groups": {}}
    listed = [len(e.tools) for e in examples if e.tools is not None]
    for e in examples:
        kind = "plain" if e.call is None else "tool"
        out[kind] += 1
        g = out["groups"].setdefault(e.group, {"tool": 0, "plain": 0})
        g[kind] += 1
    plain = [e for e in examples if e.call is None]
    out["plain_with_own_functions_share"] = round(
        sum(e.tools is not None for e in plain) / max(len(plain), 1), 4
    )
    out["functions_per_request"] = {str(k): listed.count(k) for k in sorted(set(listed))}
    out["distinct_function_names"] = len(
        {t["name"] for e in examples if e.tools is not None for t in e.tools}
    )
    return out


def length_grouped_batches(
    lengths: list[int], batch_size: int, rng: np.random.Generator, pool: int = 8
) -> list[np.ndarray]:
    """One epoch of batches: shuffled, sorted by length within pools of ``pool`` batches, batches shuffled.

    Rows of like length share a batch, so little of a step is padding.
    """
    perm = rng.permutation(len(lengths))
    size = batch_size * pool
    batches = []
    for s in range(0, len(perm), size):
        chunk = sorted(perm[s : s + size], key=lambda i: lengths[i])
        batches += [np.array(chunk[k : k + batch_size]) for k in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def train_adapter(
    lm: LoadedModel,
    pp: PromptParams,
    out_dir: str | Path,
    recipe: Recipe | None = None,
    base_description: str = "",
) -> dict:
    """Train the LoRA adapter on synthetic data, save it to ``out_dir``, return the training record.

    ``lm`` is the base model; it is trained in place through peft's LoRA
    wrapper and left with the adapter merged in (ready to evaluate).
    """
    from peft import LoraConfig, get_peft_model

    recipe = recipe or Recipe()
    out_dir = Path(out_dir)
    t0 = time.time()
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    seen: set[str] = set()
    train, valid = training_mix(pp, recipe, rng, seen)

    base_metrics = evaluate_tool_use(lm, pp, valid, recipe.eval_max_new_tokens)
    _distill(lm, pp, train + valid, recipe.distill_max_new_tokens)
    t_data = time.time() - t0
    pad = lm.tokenizer.pad_token_id
    train_items, valid_items = _encode(lm, pp, train), _encode(lm, pp, valid)

    cfg = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(lm.model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=0.0
    )
    order_rng = np.random.default_rng(recipe.seed)
    batches = []
    lengths = [len(x) for x, _ in train_items]
    for _ in range(recipe.epochs):
        batches += length_grouped_batches(lengths, recipe.batch_size, order_rng)
    if recipe.max_steps is not None:
        batches = batches[: recipe.max_steps]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)  # tokens of the steps run
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / max(len(batches), 1))
    losses = []
    t1 = time.time()
    for b in tqdm(batches, desc="LoRA training"):
        model.train()
        ids, mask, labels = _batch([train_items[i] for i in b], pad)
        loss = model(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            labels=labels.to(lm.device),
        ).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    t_train = time.time() - t1
    valid_loss = _mean_loss(model, valid_items, pad, recipe.batch_size, lm.device)
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    cfg_path = out_dir / "adapter_config.json"
    adapter_cfg = json.loads(cfg_path.read_text())
    adapter_cfg["base_model_name_or_path"] = base_description or lm.model_id  # no local cache paths
    cfg_path.write_text(json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n")

    lm.model = model.merge_and_unload()
    lm.model.eval()
    lm.prefixes.clear()  # prefix caches of the base weights are stale now
    tuned_metrics = evaluate_tool_use(lm, pp, valid, recipe.eval_max_new_tokens)

    tail = losses[-max(1, len(losses) // 10) :]
    record = {
        "what": "LoRA adapter that teaches the base model the prompt format's tool calls "
        "(a stand-in tool caller for the offline demo, not a released model)",
        "base_model": base_description or lm.model_id,
        "recipe": asdict(recipe),
        "prompt": {
            "system_template": pp.system_template,
            "tools": [t["name"] for t in pp.tools],
            "tool_call_start": pp.tool_call_start,
            "tool_call_end": pp.tool_call_end,
        },
        "data": {
            "train": mix_summary(train),
            "valid": mix_summary(valid),
            "held_out_subjects": list(HELD_OUT),
            "source": "synthetic templates (asa_lib.demo.synthetic, asa_lib.demo.functions), "
            "plain answers self-distilled from the base model on the same prompt; no Alpaca "
            "or BFCL rows, no BFCL function name",
            "train_tokens": int(sum(len(x) for x, _ in train_items)),
            "train_padding_share": round(
                1 - sum(lengths[i] for b in batches for i in b) / max(padded, 1), 4
            ),
        },
        "trainable_parameters": int(trainable),
        "steps": len(batches),
        "loss": {
            "first_step": losses[0] if losses else None,
            "final_train_mean_last_10pct": float(np.mean(tail)) if losses else None,
            "valid": valid_loss,
        },
        "synthetic_validation": {"base_model": base_metrics, "with_adapter": tuned_metrics},
        "seconds": {
            "data_and_distillation": round(t_data, 1),
            "training": round(t_train, 1),
            "total": round(time.time() - t0, 1),
        },
        "device": str(lm.device),
        "torch_threads": torch.get_num_threads(),
        "versions": {**library_versions(), "peft": peft_version()},
        "adapter_sha256": sha256_file(out_dir / ADAPTER_FILE),
        "examples": {
            g: {
                "tool": [asdict(e) for e in train if e.group == g and e.call is not None][:2],
                "plain": [asdict(e) for e in train if e.group == g and e.call is None][:2],
            }
            for g in sorted({e.group for e in train})
        },
    }
    write_json(out_dir / RECORD_FILE, record)
    write_model_card(out_dir, record)
    return record


_GROUP_WORDS = {
    "four_tools": "the prompt format's four tools",
    "functions_train": "synthetic functions (training subjects)",
    "functions_held_out": "synthetic functions (held-out subjects)",
}


def _mix_lines(mix: dict) -> str:
    return "\n".join(
        f"  - {_GROUP_WORDS.get(g, g)}: {c['tool']} tool requests, {c['plain']} requests that "
        "need no tool (answers self-distilled from the base model)"
        for g, c in mix["groups"].items()
    )


def _validation_table(v: dict) -> str:
    lines = [
        "  | requests | model | calls on tool requests | calls where none is needed | valid calls "
        "| right function | exact call |",
        "  |---|---|---|---|---|---|---|",
    ]
    for g in v["with_adapter"]:
        for who, name in (("base_model", "base"), ("with_adapter", "base + adapter")):
            m = v[who][g]
            lines.append(
                f"  | {_GROUP_WORDS.get(g, g)} ({m['tool_requests']} + {m['plain_requests']}) | "
                f"{name} | {m['trigger_rate_tool']:.0%} | {m['trigger_rate_plain']:.0%} | "
                f"{m['valid_call_rate_tool']:.0%} | {m['right_tool_rate']:.0%} | "
                f"{m['exact_call_rate']:.0%} |"
            )
    return "\n".join(lines)


def write_model_card(out_dir: str | Path, record: dict, name: str = "") -> Path:
    """``README.md`` beside the adapter (replacing peft's empty template), from the training record.

    Also gives the saved files the usual permissions (peft writes them 0600).
    """
    import os

    out_dir = Path(out_dir)
    v = record["synthetic_validation"]
    r = record["recipe"]
    card = f"""# {name or out_dir.name}: a LoRA-taught stand-in tool caller (not a released model)

Base model: {record["base_model"]} (Apache-2.0). This adapter teaches it the
offline demo's tool-call format, `{record["prompt"]["tool_call_start"]}{{"name": ..., "arguments": {{...}}}}{record["prompt"]["tool_call_end"]}`,
so that ASA has a tool-calling decision to steer. It exists for the project's
offline demo and tests; it is not a general tool-calling model.

- Trained by `asa train-demo-model` (`make demo-model`), code in `asa_lib/demo/`.
- Data (seed {r["seed"]}; no Alpaca or BFCL row, no BFCL function name):
{_mix_lines(record["data"]["train"])}
- Synthetic functions: drawn from {len(SUBJECTS)} subjects' templates (`asa_lib/demo/functions.py`),
  1-{r["max_functions"]} listed per request; validation on functions of {len(record["data"]["held_out_subjects"])} held-out subjects
  ({", ".join(record["data"]["held_out_subjects"])}).
- LoRA r={r["rank"]}, alpha={r["lora_alpha"]} on {", ".join(r["target_modules"]) if isinstance(r["target_modules"], list) else r["target_modules"]};
  {record["steps"]} steps of batch {r["batch_size"]}, lr {r["lr"]} (linear decay), {record["seconds"]["training"]:.0f} s of training
  on {record["device"]} ({record["torch_threads"]} threads).
- Loss: first step {record["loss"]["first_step"]:.3f}, last 10% of steps {record["loss"]["final_train_mean_last_10pct"]:.3f},
  synthetic validation {record["loss"]["valid"]:.3f}.
- Synthetic validation (greedy, {r["eval_max_new_tokens"]} new tokens):

{_validation_table(v)}

- `adapter_model.safetensors` sha256 `{record["adapter_sha256"]}`; the loader checks it against `training.json`.
- Everything else (recipe, versions, example conversations): `training.json`.
- Licence: Apache-2.0, as the base model.
"""
    path = out_dir / "README.md"
    path.write_text(card, encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    for f in out_dir.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)
    return path
