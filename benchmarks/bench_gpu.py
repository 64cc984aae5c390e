"""GPU benchmark: the seed's sweep on an LFM2 of LFM2.5-1.2B's shape, project path against the seed loop.

    python benchmarks/bench_gpu.py            # one H100/H200: under 8 minutes, writes benchmarks/RESULTS_gpu.md
    python benchmarks/bench_gpu.py --smoke    # a tiny version on CPU, under a minute (RESULTS_gpu_smoke.md)

Needs only torch, transformers, tokenizers, numpy, pyyaml, safetensors, tqdm
(and pytest, for the oracle in tests/test_exactness.py); no hub access, no
papermill/jupytext/nbconvert/gguf/pandas/matplotlib. Every phase prints its
progress and rewrites the results file when it ends, so a run cut short still
leaves what it measured.

What it builds, in-process (no hub):
- model: ``Lfm2ForCausalLM`` with LFM2.5-1.2B's published shape (16 blocks,
  hidden 2048, attention at blocks 2, 5, 8, 10, 12, 14 and short convs
  elsewhere, 32 heads / 8 KV heads, ``block_ff_dim`` 12288 auto-adjusted to
  8192, vocab 65,536, tied embeddings; 1.17 B parameters), random weights
  (transformers' default init, std 0.02, fixed seed), bf16.
- tokenizer: word-level, 65,536 entries (the words of the prompts, then
  filler words). It gives the Liquid prompt about 270 tokens (SmolLM2's BPE
  tokenizer gives the same text about 296; LFM2.5's own is not available
  offline). Generated ids decode and re-encode to themselves.
- data: 160 VALID + 640 TEST Alpaca instructions (the bundled subset, fixed
  seed), rendered in the seed's Liquid format (``params/lfm25.yaml``: the
  four tools in the system text) with LFM2's ChatML template.
- configs: the unsteered baseline and the seed's eight tau/alpha configs from
  ``params/lfm25.yaml``, absolute alpha. There is no trained bundle, so each
  prompt's probe output p(tool) is drawn from Beta(0.5, 0.5) (a confident,
  two-sided probe) and its routed domain uniformly from the four domains, with
  a fixed seed; each domain's steering vector is a random unit vector. Gates
  then follow the seed's rule (+1 if p >= tau, -1 if p <= 1 - tau, else 0).
  L* is block 8 (an assumption: the seed picks it by probing).

Phases:
1. exactness on the device: the tiny random LFM2 (fp32) through every
   generation path -- ``share_prefix`` auto (whole-prompt batches for conv
   models on a GPU) and always (shared prefix, equal suffix lengths), plain and
   draft-verified -- against the independent oracle of tests/test_exactness.py.
2. project path: ``asa_lib.engine.generate.generate_all`` as stage 06 runs it (batches,
   ``share_prefix`` auto, the generation cache across configs), baseline + 8
   configs on VALID + TEST, 128 new tokens, drafts off.
3. seed loop: one prompt at a time, ``model.generate`` with the seed's prefill
   hook, on a random subsample of (config, prompt) pairs; its time per
   generation is scaled to the full 9 x 800 generations. (The seed computes
   router and probe inside its hook; here the gate is precomputed, which
   flatters the seed loop by a few ms per generation.)
4. draft-verified decoding: the eight configs again, every draft verified
   (``generation.draft: on``), over a cache that holds phase 2's baseline;
   outputs and decisions compared with phase 2.

Caveats of random weights, written into the results: the logits of a random
model are nearly flat, so bf16 near-ties (where batched and batch-1 decoding,
or a verify pass and stepwise decoding, can pick different tokens) are far
more common than with trained weights; the model almost never writes a tool
call, so decision identity says little; and the state at L* has a norm
around 1 or below, so the seed's alphas (1 to 8) change outputs from the
first token and drafts are rejected (``--alpha-scale`` tries other strengths).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import lzma
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before torch, which imports tqdm
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from asa_lib.engine.cache import GenerationCache  # noqa: E402
from asa_lib.engine.generate import (  # noqa: E402
    ConfigDeltas,
    GenerationSettings,
    GenerationStats,
    generate_all,
    generate_configs,
    generation_keys,
    identity,
    share_prefix_for,
)
from asa_lib.model.load import LoadedModel, build_tiny_lfm2, decoder_blocks  # noqa: E402
from asa_lib.params import SweepConfig, load_params  # noqa: E402
from asa_lib.prompts import render_prompts  # noqa: E402
from asa_lib.tools import triggered  # noqa: E402

ATTENTION_BLOCKS = (2, 5, 8, 10, 12, 14)
DOMAINS = ("math", "code", "search", "translation")
LFM_TEMPLATE = (
    "{{ '<|startoftext|>' }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = [
    "<|pad|>",
    "<|startoftext|>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|tool_call_start|>",
    "<|tool_call_end|>",
    "<|unk|>",
]


# ----------------------------------------------------------------------------- report


NOTES_MARKER = "## Analysis"


class Report:
    """Sections of the results file, rewritten whole after every phase.

    A hand-written section that starts with ``## Analysis`` in the existing
    file is kept at the end.
    """

    def __init__(self, path: Path):
        self.path = path
        self.sections: dict[str, list[str]] = {}
        old = path.read_text() if path.is_file() else ""
        self.notes = old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else ""

    def set(self, name: str, lines: list[str]) -> None:
        self.sections[name] = lines
        self.flush()

    def flush(self) -> None:
        text = "\n".join(line for lines in self.sections.values() for line in [*lines, ""])
        text += ("\n" + self.notes) if self.notes else ""
        tmp = self.path.with_suffix(".md.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- model, tokenizer, data


def instructions(n: int, seed: int) -> list[str]:
    """``n`` distinct Alpaca instructions from the bundled subset (fixed seed)."""
    rows = []
    with lzma.open(ROOT / "data" / "alpaca_subset.jsonl.xz", "rt", encoding="utf-8") as f:
        for line in f:
            t = json.loads(line).get("instruction")
            if isinstance(t, str) and t.strip():
                rows.append(t)
    pick = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return [rows[i] for i in pick]


def word_tokenizer(corpus: list[str], vocab_size: int):
    """A word-level tokenizer of exactly ``vocab_size`` entries with LFM2's special tokens and template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for w in sorted({w for t in corpus for w, _ in pre.pre_tokenize_str(t)}):
        vocab.setdefault(w, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"w{i}", len(vocab))
        i += 1
    if len(vocab) > vocab_size:
        raise ValueError(f"the prompts hold {len(vocab)} distinct words, more than {vocab_size}")
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tk.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token="<|unk|>",
        additional_special_tokens=[
            "<|im_start|>",
            "<|endoftext|>",
            "<|tool_call_start|>",
            "<|tool_call_end|>",
        ],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = LFM_TEMPLATE
    tok.padding_side = "left"
    assert len(tok) == vocab_size, len(tok)
    return tok


def lfm25_model(tok, device: torch.device, dtype: torch.dtype, smoke: bool, seed: int = 0):
    """Lfm2ForCausalLM with LFM2.5-1.2B's shape (``smoke``: hidden 64, same 16-block layout), random weights."""
    from transformers import Lfm2Config, Lfm2ForCausalLM

    width = (
        {
            "hidden_size": 64,
            "intermediate_size": 192,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "block_multiple_of": 64,
        }
        if smoke
        else {
            "hidden_size": 2048,
            "intermediate_size": 12288,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "block_multiple_of": 256,
        }
    )
    cfg = Lfm2Config(
        vocab_size=len(tok),
        num_hidden_layers=16,
        layer_types=["full_attention" if i in ATTENTION_BLOCKS else "conv" for i in range(16)],
        block_auto_adjust_ff_dim=True,
        block_ffn_dim_multiplier=1.0,
        conv_L_cache=3,
        norm_eps=1e-5,
        max_position_embeddings=128000,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **width,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Lfm2ForCausalLM(cfg)
    model = model.to(dtype).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def configs() -> list[SweepConfig]:
    seed_cfgs = load_params(ROOT / "params" / "lfm25.yaml", check_files=False).sweep
    return [SweepConfig("baseline", tau=None, alpha=0.0)] + list(seed_cfgs)


class Gates:
    """Fixed-seed stand-in for the trained bundle: p(tool), routed domain, unit vectors per domain."""

    def __init__(self, n: int, hidden: int, seed: int, alpha_scale: float):
        g = np.random.default_rng(seed)
        self.p = g.beta(0.5, 0.5, size=n)
        self.domain = g.integers(0, len(DOMAINS), size=n)
        v = g.standard_normal((len(DOMAINS) + 1, hidden))
        self.v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(
            np.float32
        )  # last row: global
        self.alpha_scale = alpha_scale

    def gate(self, tau: float) -> np.ndarray:
        return np.where(self.p >= tau, 1, np.where(self.p <= 1 - tau, -1, 0))

    def deltas(self, cfg: SweepConfig) -> np.ndarray | None:
        if cfg.tau is None or cfg.alpha == 0:
            return None
        v = cfg.beta * self.v[-1][None] + (1 - cfg.beta) * self.v[self.domain]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        g = self.gate(cfg.tau).astype(np.float32)
        return (g * np.float32(cfg.alpha * self.alpha_scale))[:, None] * v.astype(np.float32)


# ----------------------------------------------------------------------------- phase 1: exactness


def exactness(device: torch.device, n_prompts: int, max_new: int) -> list[dict]:
    """Tiny LFM2 (fp32) on ``device``: every generation path against the oracle of tests/test_exactness.py."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_exactness import instructions as test_instructions
    from test_exactness import mixed_deltas, oracle

    pp = load_params(ROOT / "params" / "tiny.yaml").prompt
    model, tok = build_tiny_lfm2(seed=0)
    lm = LoadedModel(model.to(device), tok, "tiny-lfm2", device)
    prompts = render_prompts(tok, pp, test_instructions(n_prompts))
    deltas = mixed_deltas(len(prompts), lm.hidden_size, 50.0, seed=1)
    deltas[1::4] *= 0.001  # barely steered rows: their baseline drafts are accepted
    layer = 1

    def want(ds):
        return [
            oracle(lm.model, tok, p, d, layer, max_new, pp.tool_call_start, pp.tool_call_end)
            for p, d in zip(prompts, ds)
        ]

    want_plain, want_steer = want([None] * len(prompts)), want(deltas)
    rows = []

    def check(path, got, ref, st=None):
        extra = f" ({st.accepted_tokens}/{st.draft_tokens} draft tokens accepted)" if st else ""
        rows.append(
            {
                "path": path + extra,
                "identical": sum(a == b for a, b in zip(got, ref)),
                "n": len(ref),
            }
        )

    for setting in ("auto", "always"):
        share = share_prefix_for(setting, lm)
        where = f"share_prefix {setting} ({'prefix' if share else 'whole prompts'})"
        with tempfile.TemporaryDirectory() as tmp:
            cache = GenerationCache(Path(tmp) / "g.sqlite", {"tiny": setting})
            check(
                f"{where}, unsteered",
                generate_all(
                    lm,
                    prompts,
                    GenerationSettings(
                        max_new_tokens=max_new, batch_size=8, markers=pp, share_prefix=share
                    ),
                    None,
                    layer=layer,
                    cache=cache,
                )[0],
                want_plain,
            )
            check(
                f"{where}, steered",
                generate_all(
                    lm,
                    prompts,
                    GenerationSettings(
                        max_new_tokens=max_new, batch_size=8, markers=pp, share_prefix=share
                    ),
                    deltas,
                    layer=layer,
                )[0],
                want_steer,
            )
            st = GenerationStats()  # drafts: the cached baseline
            got, _ = generate_all(
                lm,
                prompts,
                GenerationSettings(
                    max_new_tokens=max_new, batch_size=8, markers=pp, share_prefix=share, draft=True
                ),
                deltas,
                layer=layer,
                cache=cache,
                stats=st,
            )
            check(f"{where}, steered, draft-verified (baseline drafts)", got, want_steer, st)
            keys = generation_keys(
                lm,
                GenerationSettings(max_new_tokens=max_new, batch_size=8, markers=pp),
                prompts,
                deltas,
                layer,
                cache,
            )
            own = cache.get_tokens_many(keys)
            own = [own[k] for k in keys]
            cache.close()
        # drafts: each row's own output with a wrong token in the middle (accepted in part, then decoded on)
        part = [
            x[: len(x) // 2] + [(x[len(x) // 2] + 7) % len(tok)] + x[len(x) // 2 + 1 :] for x in own
        ]
        st = GenerationStats()
        got, _ = generate_all(
            lm,
            prompts,
            GenerationSettings(
                max_new_tokens=max_new, batch_size=8, markers=pp, share_prefix=share, draft=True
            ),
            deltas,
            layer=layer,
            drafts=part,
            stats=st,
        )
        check(f"{where}, steered, draft-verified (partly wrong drafts)", got, want_steer, st)
    return rows


# ----------------------------------------------------------------------------- phases 2 and 4: project path


def project_sweep(
    lm,
    pp,
    prompts: dict[str, list[str]],
    cfgs,
    gates: dict[str, Gates],
    layer: int,
    batch: int,
    max_new: int,
    cache: GenerationCache,
    draft: bool,
    deadline: float,
    on_config,
) -> dict:
    share = share_prefix_for("auto", lm)
    out = {"outputs": {}, "configs": [], "complete": True}
    settings = GenerationSettings(
        max_new_tokens=max_new, batch_size=batch, markers=pp, share_prefix=share, draft=draft
    )
    for split in ("valid", "test"):  # every config at once, prompt-major (stage 06_generate)
        if time.time() > deadline:
            log(f"  out of time: {split} skipped")
            out["complete"] = False
            break
        st = GenerationStats()
        t = time.time()
        res = generate_configs(
            lm,
            prompts[split],
            settings,
            [ConfigDeltas(c.name, gates[split].deltas(c)) for c in cfgs],
            layer,
            cache,
            desc=f"{len(cfgs)} configs/{split}",
            stats=st,
        )
        for c in cfgs:
            out["outputs"][c.name, split] = res.outputs[c.name]
        sync()
        row = {"config": f"{len(cfgs)} configs, {split}", "seconds": time.time() - t, **asdict(st)}
        out["configs"].append(row)
        log(
            f"  {split}: {st.generated} generated in {row['seconds']:.1f} s "
            f"({st.prompt_prefills} prompts prefilled once; drafted {st.drafted}, accepted "
            f"{st.accepted_tokens}/{st.draft_tokens}, tokens forwarded {st.tokens_forwarded})"
        )
        on_config(out)
    return out


# ----------------------------------------------------------------------------- phase 3: seed loop


def seed_loop(
    lm, prompts, cfgs, gates, layer, max_new, pairs, budget_s: float, on_pair
) -> list[dict]:
    """The seed's evaluate loop: one prompt at a time, a prefill hook, ``model.generate``."""
    model, tok = lm.model, lm.tokenizer
    block = decoder_blocks(model)[layer]
    rows = []
    t_end = time.time() + budget_s
    for ci, split, i in pairs:
        if rows and time.time() > t_end:
            log(f"  seed loop: phase budget spent after {len(rows)} generations")
            break
        cfg = cfgs[ci]
        d = gates[split].deltas(cfg)
        state = {"injected": False}

        def asa_hook(_m, _inp, out, d=d, i=i, state=state):  # the seed's asa_hook, gate precomputed
            if state["injected"]:
                return out
            state["injected"] = True
            if d is None or not np.any(d[i]):
                return out
            h = out[0] if isinstance(out, tuple) else out
            hn = h.clone()
            hn[:, -1, :] += torch.tensor(d[i], dtype=h.dtype, device=h.device)
            return (hn, *out[1:]) if isinstance(out, tuple) else hn

        ids = tok(prompts[split][i], return_tensors="pt").input_ids.to(lm.device)
        hook = block.register_forward_hook(asa_hook) if cfg.tau is not None else None
        sync()
        t = time.time()
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
            )
        sync()
        secs = time.time() - t
        if hook:
            hook.remove()
        text = tok.decode(out[0][ids.shape[1] :], skip_special_tokens=False)
        rows.append(
            {
                "config": cfg.name,
                "split": split,
                "i": int(i),
                "seconds": secs,
                "new_tokens": int(out.shape[1] - ids.shape[1]),
                "output": text,
            }
        )
        log(
            f"  seed loop {len(rows)}/{len(pairs)}: {cfg.name}/{split}#{i} {secs:.2f} s, "
            f"{rows[-1]['new_tokens']} tokens"
        )
        on_pair(rows)
    return rows


# ----------------------------------------------------------------------------- driver


def machine(device: torch.device) -> str:
    import transformers

    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        dev = f"{p.name} ({p.total_memory / 2**30:.0f} GiB)"
    else:
        dev = f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return (
        f"{dev}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--smoke", action="store_true", help="tiny version on CPU, under a minute")
    ap.add_argument("--valid", type=int, default=None, help="VALID prompts (default 160; smoke 4)")
    ap.add_argument("--test", type=int, default=None, help="TEST prompts (default 640; smoke 8)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (smoke 8)")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="project batch size (default 256; smoke 8)"
    )
    ap.add_argument(
        "--seed-loop",
        type=int,
        default=None,
        help="seed-loop generations in the subsample (default 12; smoke 3)",
    )
    ap.add_argument(
        "--seed-loop-budget", type=float, default=60.0, help="seconds at most for the seed loop"
    )
    ap.add_argument("--layer", type=int, default=8, help="L* (default 8)")
    ap.add_argument(
        "--alpha-scale", type=float, default=1.0, help="multiply the seed's absolute alphas"
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds after which no new config starts (default 420; smoke 50)",
    )
    ap.add_argument(
        "--skip", default="", help="phases to skip, comma-separated: exactness,seed,draft"
    )
    ap.add_argument("--out", default=None, help="results file (default benchmarks/RESULTS_gpu.md)")
    args = ap.parse_args()
    smoke = args.smoke
    n_valid = args.valid if args.valid is not None else (4 if smoke else 160)
    n_test = args.test if args.test is not None else (8 if smoke else 640)
    max_new = args.max_new_tokens or (8 if smoke else 128)
    batch = args.batch_size or (8 if smoke else 256)
    n_seed = args.seed_loop if args.seed_loop is not None else (3 if smoke else 12)
    budget = args.budget if args.budget is not None else (50.0 if smoke else 420.0)
    skip = set(filter(None, args.skip.split(",")))
    out_path = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / ("RESULTS_gpu_smoke.md" if smoke else "RESULTS_gpu.md")
    )
    t0 = time.time()
    deadline = t0 + budget

    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    dtype = torch.bfloat16
    if not smoke and device.type != "cuda":
        raise SystemExit("no GPU visible: run with --smoke on a CPU")
    torch.set_grad_enabled(False)
    rep = Report(out_path)

    # ---- setup
    pp = load_params(ROOT / "params" / "lfm25.yaml", check_files=False).prompt
    texts = instructions(n_valid + n_test, seed=42)
    corpus = [
        *texts,
        pp.system_template,
        json.dumps(pp.tools),
        "system user assistant Alpha. Zulu?",
    ]
    tok = word_tokenizer(corpus, 65536)
    prompts = {
        "valid": render_prompts(tok, pp, texts[:n_valid]),
        "test": render_prompts(tok, pp, texts[n_valid:]),
    }
    lens = [len(x) for s in prompts.values() for x in tok(s, add_special_tokens=False)["input_ids"]]
    t = time.time()
    model = lfm25_model(tok, device, dtype, smoke)
    sync()
    t_build = time.time() - t
    lm = LoadedModel(model, tok, "random LFM2 (LFM2.5-1.2B shape)", device)
    n_params = sum(p.numel() for p in model.parameters())
    layer = min(args.layer, lm.num_layers - 1)
    cfgs = configs()
    gates = {
        "valid": Gates(n_valid, lm.hidden_size, 1, args.alpha_scale),
        "test": Gates(n_test, lm.hidden_size, 2, args.alpha_scale),
    }
    # scale of the states the alphas act on: the last prompt token's output of block L*
    cap = {}
    handle = decoder_blocks(model)[layer].register_forward_hook(
        lambda _m, _i, o: cap.__setitem__("h", (o[0] if isinstance(o, tuple) else o)[:, -1].float())
    )
    enc = tok(prompts["valid"][:8], add_special_tokens=False, padding=True, return_tensors="pt").to(
        device
    )
    model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    handle.remove()
    h_norm = float(cap["h"].norm(dim=-1).mean())
    steered = {
        c.name: int(sum(np.count_nonzero(g.gate(c.tau)) for g in gates.values()))
        for c in cfgs
        if c.tau is not None
    }
    log(
        f"model built in {t_build:.1f} s: {n_params / 1e9:.3f} B parameters, {dtype}, {device}; "
        f"prompts {min(lens)}-{max(lens)} tokens; |h| at L*={layer}: {h_norm:.2f}"
    )
    rep.set(
        "head",
        [
            f"# GPU benchmark: seed sweep shape, random LFM2 with LFM2.5-1.2B's shape{' (SMOKE: tiny, CPU)' if smoke else ''}",
            "",
            f"- date: {dt.datetime.now().isoformat(timespec='minutes')}",
            f"- machine: {machine(device)}",
            f"- model: Lfm2ForCausalLM, {lm.num_layers} blocks (attention at {', '.join(map(str, ATTENTION_BLOCKS))}), "
            f"hidden {lm.hidden_size}, vocab {len(tok)}, {n_params / 1e9:.3f} B parameters, random weights "
            f"(std 0.02, seed 0), {str(dtype).replace('torch.', '')}; built in {t_build:.1f} s",
            f"- prompts: {n_valid} VALID + {n_test} TEST Alpaca instructions in the seed's Liquid format "
            f"(four tools in the system text), {min(lens)}-{max(lens)} tokens (median {int(np.median(lens))}, "
            "word-level tokenizer)",
            f"- generation: greedy, {max_new} new tokens at most, project batch size {batch}, L* = block {layer}; "
            "configs: baseline + the seed's eight (absolute alpha"
            + (f" x {args.alpha_scale}" if args.alpha_scale != 1 else "")
            + ")",
            f"- gates: p(tool) ~ Beta(0.5, 0.5), domain uniform, random unit vectors (fixed seeds); steered prompts "
            f"per config (of {n_valid + n_test}): "
            + ", ".join(f"{k} {v}" for k, v in steered.items()),
            f"- mean L2 norm of the steered state (last prompt token, output of block {layer}): {h_norm:.2f}; "
            "the alphas are 1 to 8",
        ],
    )

    # ---- phase 1: exactness on the device
    if "exactness" not in skip:
        log(
            "phase 1: exactness of every generation path on the device (tiny LFM2, fp32) against the oracle"
        )
        try:
            t = time.time()
            rows = exactness(device, 8 if smoke else 24, 6 if smoke else 8)
            ok = all(r["identical"] == r["n"] for r in rows)
            rep.set(
                "exactness",
                [
                    f"## Exactness on {device.type} (tiny random LFM2, fp32, against tests/test_exactness.py's oracle)",
                    "",
                    "| path | identical to the oracle |",
                    "|---|---:|",
                    *[f"| {r['path']} | {r['identical']}/{r['n']} |" for r in rows],
                    "",
                    f"- all identical: **{'yes' if ok else 'NO'}** ({time.time() - t:.0f} s)",
                ],
            )
            for r in rows:
                log(f"  {r['path']}: {r['identical']}/{r['n']}")
        except Exception:  # a failed check is a result, not a reason to lose the timings
            traceback.print_exc()
            rep.set("exactness", ["## Exactness", "", "```", traceback.format_exc(), "```"])

    # ---- phase 2: project path, drafts off
    log(
        f"phase 2: project path (generate_configs: every config at once, prompt-major; cache, share_prefix auto = "
        f"{'prefix' if share_prefix_for('auto', lm) else 'whole prompts'}), drafts off"
    )
    warm = generate_all(
        lm,
        prompts["valid"][:2],
        GenerationSettings(max_new_tokens=4, batch_size=2, markers=pp),
        None,
        layer=layer,
    )  # CUDA/cuBLAS warm-up
    del warm
    tmp = tempfile.TemporaryDirectory()
    cache_off = GenerationCache(Path(tmp.name) / "off.sqlite", {"bench": "gpu", "max_new": max_new})
    n_pairs = len(cfgs) * (n_valid + n_test)

    def project_lines(res, title):
        total = sum(r["seconds"] for r in res["configs"])
        lines = [
            f"## {title}",
            "",
            "| config | generated | seconds | tokens forwarded | forward passes | drafted | draft tokens accepted | done by draft |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {r['config']} | {r['generated']} | {r['seconds']:.1f} | {r['tokens_forwarded']} | "
                f"{r['forward_passes']} | {r['drafted']} | {r['accepted_tokens']}/{r['draft_tokens']} | "
                f"{r['done_by_draft']} |"
                for r in res["configs"]
            ],
            f"| **total** ({len(cfgs)} configs, prompt-major) | "
            f"{sum(r['generated'] for r in res['configs'])} | {total:.1f} | "
            f"{sum(r['tokens_forwarded'] for r in res['configs'])} | "
            f"{sum(r['forward_passes'] for r in res['configs'])} | | | |",
        ]
        return lines, total

    def on_off(res):
        lines, _ = project_lines(
            res,
            "Project path, drafts off (generate_configs, prompt-major, with the generation cache)",
        )
        rep.set("project", lines)

    off = project_sweep(
        lm, pp, prompts, cfgs, gates, layer, batch, max_new, cache_off, False, deadline, on_off
    )
    t_off = sum(r["seconds"] for r in off["configs"])
    complete = off["complete"]

    # ---- phase 3: seed loop on a subsample
    seed_rows: list[dict] = []
    draft_acc: list[float] = []  # phase 4's share of draft tokens accepted
    if "seed" not in skip:
        log(f"phase 3: seed loop, one prompt at a time, {n_seed} (config, prompt) pairs")
        rng = np.random.default_rng(7)
        pairs = [
            (ci, s, i)
            for ci in range(len(cfgs))
            for s in ("valid", "test")
            for i in range(len(prompts[s]))
        ]
        pick = [
            pairs[j] for j in rng.choice(len(pairs), size=min(n_seed, len(pairs)), replace=False)
        ]
        ids = tok(prompts["valid"][0], return_tensors="pt").input_ids.to(device)
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )  # warm-up

        def on_pair(rows):
            per = float(np.mean([r["seconds"] for r in rows]))
            est = per * n_pairs
            lines = [
                "## Seed loop (one prompt at a time), subsample scaled to the full sweep",
                "",
                f"- {len(rows)} generations drawn at random from the {n_pairs} (config, prompt) pairs: "
                f"{per:.2f} s per generation on average ({np.mean([r['new_tokens'] for r in rows]):.0f} new "
                f"tokens on average, min {min(r['seconds'] for r in rows):.2f} s, "
                f"max {max(r['seconds'] for r in rows):.2f} s)",
                f"- scaled to {n_pairs} generations: **{est:.0f} s** ({est / 3600:.2f} h)",
            ]
            if complete:
                lines.append(
                    f"- project path, drafts off, whole sweep: {t_off:.1f} s -> **{est / t_off:.0f}x** faster"
                )
            same = dec = prefix_ok = 0
            for r in rows:
                o = off["outputs"].get((r["config"], r["split"]))
                if o is None:
                    continue
                p_out = o[r["i"]]
                same += p_out == r["output"]
                prefix_ok += r["output"].startswith(p_out)
                dec += triggered(p_out, pp) == triggered(r["output"], pp)
            lines.append(
                f"- against the project path's outputs for the same pairs: decisions identical {dec}/{len(rows)}, "
                f"outputs identical {same}/{len(rows)}, project output a prefix of the seed's "
                f"(it stops at a complete call) {prefix_ok}/{len(rows)} (bf16: batched and batch-1 "
                "decoding sum in different orders)"
            )
            rep.set("seed", lines)

        seed_rows = seed_loop(
            lm,
            prompts,
            cfgs,
            gates,
            layer,
            max_new,
            pick,
            min(args.seed_loop_budget, max(deadline - time.time(), 5.0)),
            on_pair,
        )

    # ---- phase 4: drafts on, over phase 2's baseline
    if "draft" not in skip and off["configs"]:
        log(
            "phase 4: draft-verified decoding: the eight configs again, every draft verified, "
            "drafts from phase 2's baseline"
        )
        cache_on = GenerationCache(
            Path(tmp.name) / "on.sqlite", {"bench": "gpu", "max_new": max_new}
        )
        keys = generation_keys(  # the baseline rows (both caches have one context)
            lm,
            GenerationSettings(max_new_tokens=max_new, batch_size=8, markers=pp),
            [p for s in ("valid", "test") for p in prompts[s]],
            None,
            layer,
            cache_off,
        )
        cache_on.put_many(cache_off.get_many(keys), cache_off.get_tokens_many(keys))
        t_base = off["configs"][0]["seconds"]

        def on_on(res):
            lines, total = project_lines(
                res,
                "Project path, drafts on: every draft verified "
                "(generation.draft: on; baseline reused from phase 2)",
            )
            a, b = [], []
            for (name, split), o in res["outputs"].items():
                a += o
                b += off["outputs"][name, split]
            idn = identity(a, b, pp)
            done = [r["config"] for r in res["configs"]]
            t_same = sum(r["seconds"] for r in off["configs"] if r["config"] in done)
            acc = sum(r["accepted_tokens"] for r in res["configs"])
            offered = sum(r["draft_tokens"] for r in res["configs"])
            draft_acc[:] = [acc / max(offered, 1)]
            lines += [
                "",
                f"- the same {len(done)} configs with drafts off: {t_same:.1f} s; with drafts on: {total:.1f} s "
                f"(**{t_same / max(total, 1e-9):.2f}x**)"
                + (
                    f"; whole sweep with drafts on (phase 2's baseline {t_base:.1f} s + these): "
                    f"{t_base + total:.1f} s"
                    if len(done) == len(cfgs) - 1
                    else ""
                ),
                f"- draft tokens accepted: {acc}/{offered} ({100 * acc / max(offered, 1):.1f}%)",
                f"- against drafts off, on {idn['n']} (config, prompt) outputs: outputs identical "
                f"{idn['outputs_identical']}/{idn['n']} ({100 * idn['output_identity']:.1f}%), decisions "
                f"(tool call triggered) identical {idn['decisions_identical']}/{idn['n']} "
                f"({100 * idn['decision_identity']:.1f}%)",
            ]
            rep.set("draft", lines)

        project_sweep(
            lm, pp, prompts, cfgs[1:], gates, layer, batch, max_new, cache_on, True, deadline, on_on
        )
        cache_on.close()
    cache_off.close()
    tmp.cleanup()

    # ---- summary
    lines = ["## Summary", ""]
    if complete:
        lines.append(
            f"- seed sweep shape (baseline + 8 configs, {n_valid + n_test} prompts, {max_new} new tokens), "
            f"project path, drafts off: **{t_off:.1f} s** ({sum(r['generated'] for r in off['configs'])} "
            f"generations of {n_pairs} (config, prompt) pairs)"
        )
    else:
        lines.append(
            f"- project path incomplete: {len(off['configs'])} of 2 splits in {t_off:.1f} s"
        )
    if seed_rows and complete:
        est = float(np.mean([r["seconds"] for r in seed_rows])) * n_pairs
        lines.append(f"- seed loop, scaled: {est:.0f} s -> speed-up **{est / t_off:.0f}x**")
    lines.append(f"- wall time of this benchmark: {time.time() - t0:.0f} s")
    lines += [
        "",
        "Random weights: nearly flat logits make bf16 near-ties (batched vs batch-1, verify pass vs "
        "stepwise) far more common than with a trained model; tool calls are almost never written, so "
        "decision identity says little; the state norm at L* is "
        f"{h_norm:.2f} against alphas of {min(c.alpha for c in cfgs[1:]) * args.alpha_scale:g} to "
        f"{max(c.alpha for c in cfgs[1:]) * args.alpha_scale:g}"
        + (f", and {100 * draft_acc[0]:.1f}% of draft tokens were accepted" if draft_acc else "")
        + ". Timings are what this shape costs; acceptance rates are not LFM2.5's.",
    ]
    rep.set("summary", lines)
    log(f"done in {time.time() - t0:.0f} s; written to {out_path}")
    print(out_path.read_text())


if __name__ == "__main__":
    main()
