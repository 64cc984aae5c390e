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

from asa_lib.demo.synthetic import Example, synthetic_requests
from asa_lib.files import library_versions, write_json
from asa_lib.model.load import LoadedModel
from asa_lib.model.lora import ADAPTER_FILE, RECORD_FILE, peft_version, sha256_file
from asa_lib.params import PromptParams
from asa_lib.prompts import prompt_token_ids, render_prompts
from asa_lib.tools import CallMarkers, score_output


@dataclass
class Recipe:
    """Everything that decides the adapter. Fixed here; the figures are in ``training.json``."""

    seed: int = 0
    n_tool_train: int = 192  # per split: tool requests, spread over the tools
    n_plain_train: int = 192  # plain requests (self-distilled answers)
    n_tool_valid: int = 48
    n_plain_valid: int = 48
    distill_max_new_tokens: int = 40  # length of the base model's own answers
    rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | str = field(
        default_factory=lambda: ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
    )
    lr: float = 5e-4
    epochs: int = 1
    batch_size: int = 8
    max_steps: int | None = None  # None: epochs x batches (tests set a few steps)
    eval_max_new_tokens: int = 40


def _distill(
    lm: LoadedModel, pp: PromptParams, examples: list[Example], max_new_tokens: int
) -> None:
    """Fill the plain requests' answers with the base model's own greedy answers."""
    from asa_lib.engine.generate import GenerationSettings, generate_all

    plain = [e for e in examples if e.call is None]
    if not plain:
        return
    prompts = render_prompts(lm.tokenizer, pp, [e.text for e in plain])
    outs, _ = generate_all(
        lm, prompts, GenerationSettings(max_new_tokens, 16, pp), desc="self-distillation"
    )
    for e, o in zip(plain, outs):
        e.answer = o


def _encode(
    lm: LoadedModel, pp: PromptParams, examples: list[Example]
) -> list[tuple[list[int], int]]:
    """(prompt + answer token ids, number of prompt tokens) per example."""
    tok = lm.tokenizer
    prompts = render_prompts(tok, pp, [e.text for e in examples])
    out = []
    for p_ids, e in zip(prompt_token_ids(tok, prompts), examples):
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


def evaluate_tool_use(
    lm: LoadedModel, pp: PromptParams, examples: list[Example], max_new_tokens: int
) -> dict:
    """Trigger rates and call validity of ``lm`` on synthetic requests (greedy)."""
    from asa_lib.engine.generate import GenerationSettings, generate_all

    prompts = render_prompts(lm.tokenizer, pp, [e.text for e in examples])
    outs, _ = generate_all(
        lm, prompts, GenerationSettings(max_new_tokens, 16, pp), desc="synthetic validation"
    )
    markers = CallMarkers.of(pp)
    scores = [score_output(o, markers, pp.tools) for o in outs]
    tool = [(e, o, s) for e, o, s in zip(examples, outs, scores) if e.call is not None]
    plain = [s for e, s in zip(examples, scores) if e.call is None]
    right_tool = sum(s.valid and f'"name": "{e.call["name"]}"' in o for e, o, s in tool)
    return {
        "tool_requests": len(tool),
        "plain_requests": len(plain),
        "trigger_rate_tool": float(np.mean([s.triggered for _, _, s in tool])) if tool else 0.0,
        "trigger_rate_plain": float(np.mean([s.triggered for s in plain])) if plain else 0.0,
        "valid_call_rate_tool": float(np.mean([s.valid for _, _, s in tool])) if tool else 0.0,
        "right_tool_rate": right_tool / max(len(tool), 1),
    }


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
    train = synthetic_requests(pp, recipe.n_tool_train, recipe.n_plain_train, rng, seen)
    valid = synthetic_requests(pp, recipe.n_tool_valid, recipe.n_plain_valid, rng, seen)

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
    for _ in range(recipe.epochs):
        perm = order_rng.permutation(len(train_items))
        batches += [perm[s : s + recipe.batch_size] for s in range(0, len(perm), recipe.batch_size)]
    if recipe.max_steps is not None:
        batches = batches[: recipe.max_steps]
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
            "train": {"tool": recipe.n_tool_train, "plain": recipe.n_plain_train},
            "valid": {"tool": recipe.n_tool_valid, "plain": recipe.n_plain_valid},
            "source": "synthetic templates (asa_lib.demo.synthetic), plain answers self-distilled "
            "from the base model; no Alpaca rows",
            "train_tokens": int(sum(len(x) for x, _ in train_items)),
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
            "tool": [asdict(e) for e in train if e.call is not None][:3],
            "plain": [asdict(e) for e in train if e.call is None][:3],
        },
    }
    write_json(out_dir / RECORD_FILE, record)
    write_model_card(out_dir, record)
    return record


def write_model_card(out_dir: str | Path, record: dict) -> Path:
    """``README.md`` beside the adapter (replacing peft's empty template), from the training record.

    Also gives the saved files the usual permissions (peft writes them 0600).
    """
    import os

    out_dir = Path(out_dir)
    v = record["synthetic_validation"]
    r = record["recipe"]
    card = f"""# {out_dir.name}: a LoRA-taught stand-in tool caller (not a released model)

Base model: {record["base_model"]} (Apache-2.0). This adapter teaches it the
offline demo's tool-call format, `{record["prompt"]["tool_call_start"]}{{"name": ..., "arguments": {{...}}}}{record["prompt"]["tool_call_end"]}`,
so that ASA has a tool-calling decision to steer. It exists for the project's
offline demo and tests; it is not a general tool-calling model.

- Trained by `asa train-demo-model` (`make demo-model`), code in `asa_lib/demo/`.
- Data: {record["data"]["train"]["tool"]} templated tool requests + {record["data"]["train"]["plain"]} plain
  requests (answers self-distilled from the base model), seed {r["seed"]}; no Alpaca rows.
- LoRA r={r["rank"]}, alpha={r["lora_alpha"]} on {", ".join(r["target_modules"]) if isinstance(r["target_modules"], list) else r["target_modules"]};
  {record["steps"]} steps of batch {r["batch_size"]}, lr {r["lr"]} (linear decay), {record["seconds"]["training"]:.0f} s of training
  on {record["device"]} ({record["torch_threads"]} threads).
- Loss: first step {record["loss"]["first_step"]:.3f}, last 10% of steps {record["loss"]["final_train_mean_last_10pct"]:.3f},
  synthetic validation {record["loss"]["valid"]:.3f}.
- Synthetic validation ({v["with_adapter"]["tool_requests"]} tool + {v["with_adapter"]["plain_requests"]} plain requests, greedy):

  | model | triggers on tool requests | triggers on plain requests | valid calls |
  |---|---|---|---|
  | base | {v["base_model"]["trigger_rate_tool"]:.0%} | {v["base_model"]["trigger_rate_plain"]:.0%} | {v["base_model"]["valid_call_rate_tool"]:.0%} |
  | base + adapter | {v["with_adapter"]["trigger_rate_tool"]:.0%} | {v["with_adapter"]["trigger_rate_plain"]:.0%} | {v["with_adapter"]["valid_call_rate_tool"]:.0%} |

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
