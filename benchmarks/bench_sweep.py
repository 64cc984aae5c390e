"""Benchmark: the seed notebook's one-prompt-at-a-time loop against this project's path.

Both paths run on the same model, prompts, configs (baseline + the seed's eight
tau/alpha configs, absolute alpha), dtype and max new tokens, each in its own
subprocess (so peak memory is measured per path):

- reference (seed-faithful): extraction one prompt at a time with hooks on
  every block; then for every config, every VALID and TEST prompt generated one
  at a time with a hook that computes scaler, router, probe and gate on the fly
  at the prefill (the seed's ``evaluate_split``), no reuse between configs.
- project: prefix-cached batched extraction; gates from the stored L* states;
  VALID and TEST with every config in one prompt-major pass (``generate_configs``,
  as stage 06_generate runs it: each prompt prefilled once, every config continued
  from it, drafts verified from it), batched, with early stop.

Both fit L*, vectors, router and probes with ``asa_lib.method.probing.fit_from_states``
(stages 03-05) on their own states. The script prints a table and writes ``benchmarks/RESULTS.md``:
times per stage, generations run, sweep tokens forwarded (a FLOP proxy),
draft-verified decoding counts (``--draft auto|on|off``, the project path's
``generation.draft``), output and decision agreement.

    python benchmarks/bench_sweep.py                  # demo model (SmolLM2 + the tool-calling LoRA), 128 new tokens
    python benchmarks/bench_sweep.py --model smollm2 --max-new-tokens 32   # plain SmolLM2 (never calls a tool)
    python benchmarks/bench_sweep.py --data bfcl --max-new-tokens 32   # BFCL rows, each with its own tools
    python benchmarks/bench_sweep.py --quick          # tiny random LFM2, about a minute
    python benchmarks/bench_sweep.py --ref-every 3    # the seed loop on every 3rd prompt, its time scaled up

``--ref-every K`` runs the seed loop's sweep on every K-th VALID/TEST prompt
of every config (generations are independent, so its time and tokens are
scaled by generations run / generations sampled; the table says so) and
compares decisions and outputs on those; extraction always runs in full.
    python benchmarks/bench_sweep.py --memory   # peak RSS of streamed extraction, 2k vs 20k prompts (tiny LFM2)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")
warnings.filterwarnings("ignore")

from asa_lib.data import make_splits_from_params, sample_tools  # noqa: E402
from asa_lib.engine.generate import GenerationSettings  # noqa: E402
from asa_lib.method import probing  # noqa: E402
from asa_lib.model.load import decoder_blocks, load_model  # noqa: E402
from asa_lib.params import baseline_config, load_params  # noqa: E402
from asa_lib.prompts import render_prompts  # noqa: E402
from asa_lib.tools import triggered  # noqa: E402

SPLITS = ("cal", "train", "valid", "test")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(args):
    name = "tiny.yaml" if args.quick else ("bfcl.yaml" if args.data == "bfcl" else "demo.yaml")
    params = load_params(ROOT / "params" / name)
    if args.quick or args.model == "smollm2":
        params.model.adapter = None  # the base model
    params.data.per_split_per_class = args.per_split
    params.data.test_multiplier = 2
    params.model.dtype = args.dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = make_splits_from_params(params)
    splits = result.samples
    lm = load_model(params.model, seed=params.data.seed, adapter=params.adapter_path())
    prompts = {  # each row with its own tools (BFCL), else the prompt format's
        s: render_prompts(
            lm.tokenizer, params.prompt, [x.text for x in xs], sample_tools(xs, result.tool_sets)
        )
        for s, xs in splits.items()
    }
    seed_cfgs = load_params(ROOT / "params" / "lfm25.yaml", check_files=False).sweep
    configs = [baseline_config()] + seed_cfgs
    return params, splits, lm, prompts, configs, result.domains


def fit(states, splits, domains, model_id):
    """Stages 03-05 on one path's own states (``probing.fit_from_states``): (bundle, report)."""
    y = {s: np.array([x.label for x in splits[s]]) for s in SPLITS}
    d = {s: [x.domain for x in splits[s]] for s in SPLITS}
    return probing.fit_from_states(states, y, d, domains, model_id=model_id)


# ----------------------------------------------------------------------------- reference (the seed's loops)


def reference(args) -> dict:
    import torch

    params, splits, lm, prompts, configs, domains = setup(args)
    model, tok = lm.model, lm.tokenizer
    blocks = decoder_blocks(model)
    L = len(blocks)
    t0 = time.time()
    states = {}
    for s in SPLITS:  # the seed's extract_hidden_states
        captured, hooks, rows = {}, [], []

        def make_hook(i):
            def hook_fn(module, inp, out):
                h = out[0] if isinstance(out, tuple) else out
                captured[i] = h[:, -1, :].detach().cpu().float().numpy()  # noqa: B023 (used in this iteration)

            return hook_fn

        for i in range(L):
            hooks.append(blocks[i].register_forward_hook(make_hook(i)))
        for text in prompts[s]:
            ids = tok(text, return_tensors="pt").input_ids.to(model.device)
            captured.clear()
            with torch.no_grad():
                model(ids)
            rows.append(np.stack([captured[i][0] for i in range(L)]))
        for h in hooks:
            h.remove()
        states[s] = np.stack(rows)
    t_extract = time.time() - t0

    bundle, report = fit(states, splits, domains, lm.model_id)
    layer, vecs, rf = bundle.layer, report.vectors, report.fit
    classes = rf.router_classes

    def steer_vec(dom, beta):
        v_d, v_g = vecs.get(dom), vecs.get("global")
        if v_d is None:
            return v_g
        v = beta * v_g + (1 - beta) * v_d if (v_g is not None and beta > 0) else v_d
        return v / (np.linalg.norm(v) + 1e-8)

    t1 = time.time()
    decisions, outputs, forwarded, total = {}, {}, 0, 0
    for cfg in configs:
        for s in ("valid", "test"):
            for j, (text, x) in enumerate(zip(prompts[s], splits[s])):
                total += 1
                if j % args.ref_every:
                    continue  # not in the sample: its time is estimated from the others
                state = {"injected": False}

                def asa_hook(module, inp, out, cfg=cfg, state=state):  # the seed's asa_hook
                    if state["injected"]:
                        return out
                    state["injected"] = True
                    h = out[0] if isinstance(out, tuple) else out
                    hs = rf.scaler.transform(h[:, -1, :].detach().cpu().double().numpy())
                    # one domain: no router (every prompt is that domain's)
                    dom = classes[0] if rf.router is None else classes[rf.router.predict(hs)[0]]
                    pt = rf.probes[dom].predict_proba(hs)[0, 1] if dom in rf.probes else 0.5
                    gate = 1 if pt >= cfg.tau else (-1 if pt <= 1 - cfg.tau else 0)
                    if gate == 0:
                        return out
                    vt = torch.tensor(steer_vec(dom, cfg.beta), dtype=h.dtype).to(h.device)
                    hn = h.clone()
                    hn[:, -1, :] += gate * cfg.alpha * vt
                    return (hn, *out[1:]) if isinstance(out, tuple) else hn

                ids = tok(text, return_tensors="pt").input_ids.to(model.device)
                hook = (
                    blocks[layer].register_forward_hook(asa_hook) if cfg.tau is not None else None
                )
                with torch.no_grad():
                    out = model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=args.max_new_tokens,
                        do_sample=False,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                        pad_token_id=tok.pad_token_id,
                    )
                if hook:
                    hook.remove()
                text_out = tok.decode(out[0][ids.shape[1] :], skip_special_tokens=False)
                decisions[f"{cfg.name}/{x.id}"] = bool(triggered(text_out, params.prompt))
                outputs[f"{cfg.name}/{x.id}"] = text_out
                forwarded += (
                    out.shape[1] - 1
                )  # prefill of the prompt, then one token per decode step
    t_sweep = time.time() - t1
    scale = total / len(decisions)
    return {
        "extract_s": t_extract,
        "sweep_s": t_sweep * scale,
        "sweep_measured_s": t_sweep,
        "sampled": len(decisions),
        "layer": layer,
        "decisions": decisions,
        "outputs": outputs,
        "tokens_forwarded": int(round(forwarded * scale)),
        "generations": total,
        "peak_rss_mb": peak_rss_mb(),
        "states": states,
    }


# ----------------------------------------------------------------------------- project path


def project(args) -> dict:
    from dataclasses import asdict

    from asa_lib.engine.cache import GenerationCache
    from asa_lib.engine.draft import draft_for, draft_min_acceptance_for
    from asa_lib.engine.extract import extract_states
    from asa_lib.engine.generate import ConfigDeltas, GenerationStats, generate_configs
    from asa_lib.method.gate import compute_gates, steering_deltas

    params, splits, lm, prompts, configs, domains = setup(args)
    t0 = time.time()
    states = {s: extract_states(lm, prompts[s], batch_size=args.batch_size) for s in SPLITS}
    t_extract = time.time() - t0
    bundle, _ = fit(states, splits, domains, lm.model_id)
    layer = bundle.layer
    t1 = time.time()
    decisions, outputs, generated = {}, {}, 0
    stats = GenerationStats()
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        markers=params.prompt,
        draft=draft_for(args.draft, lm),
        draft_min_acceptance=draft_min_acceptance_for(args.draft, lm),
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = GenerationCache(Path(tmp) / "gen.sqlite", {"bench": lm.model_id})
        # VALID and TEST, every config, in one prompt-major pass (as stage 06_generate runs it)
        rows = [(s, x) for s in ("valid", "test") for x in splits[s]]
        ps = [p for s in ("valid", "test") for p in prompts[s]]
        h = np.concatenate([states[s][:, layer] for s in ("valid", "test")])
        cds = []
        for cfg in configs:
            deltas = None
            if cfg.steers:
                gates = compute_gates(bundle, h, cfg)
                deltas = steering_deltas(bundle, gates, cfg.alpha, cfg)
            cds.append(ConfigDeltas(cfg.name, deltas))
        res = generate_configs(lm, ps, settings, cds, layer, cache, desc="all configs", stats=stats)
        generated += res.generated_total
        for cfg in configs:
            for (_, x), o in zip(rows, res.outputs[cfg.name]):
                decisions[f"{cfg.name}/{x.id}"] = bool(triggered(o, params.prompt))
                outputs[f"{cfg.name}/{x.id}"] = o
        cache.close()
    t_sweep = time.time() - t1
    return {
        "extract_s": t_extract,
        "sweep_s": t_sweep,
        "layer": layer,
        "decisions": decisions,
        "outputs": outputs,
        "tokens_forwarded": stats.tokens_forwarded,
        "generation": asdict(stats),
        "generations": generated,
        "peak_rss_mb": peak_rss_mb(),
        "states": states,
    }


# ----------------------------------------------------------------------------- memory mode


def memory(args) -> dict:
    from asa_lib.engine.extract import extract_to_file
    from asa_lib.model.load import build_tiny_tokenizer  # noqa: F401 (tiny model below)
    from asa_lib.params import ModelParams

    lm = load_model(ModelParams(kind="tiny", device="cpu"), seed=0)
    rng = np.random.default_rng(0)
    words = [
        "calculate",
        "the",
        "sum",
        "of",
        "search",
        "news",
        "write",
        "code",
        "translate",
        "poem",
        "why",
    ]
    prompts = [" ".join(rng.choice(words, size=rng.integers(5, 40))) for _ in range(args.n_prompts)]
    prompts = render_prompts(
        lm.tokenizer, load_params(ROOT / "params" / "tiny.yaml").prompt, prompts
    )
    base = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        extract_to_file(lm, prompts, Path(tmp) / "x.safetensors", batch_size=64)
        secs = time.time() - t
        size = (Path(tmp) / "x.safetensors").stat().st_size / 2**20
    return {
        "n": args.n_prompts,
        "seconds": secs,
        "file_mb": size,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": base,
    }


# ----------------------------------------------------------------------------- driver


def child(args):
    fn = {"reference": reference, "project": project, "memory": memory}[args.path]
    res = fn(args)
    states = res.pop("states", None)
    if states is not None:
        np.savez(args.out_json + ".npz", **states)
    Path(args.out_json).write_text(json.dumps(res))


def run_child(args, path: str, extra: list[str] | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = (
        [
            sys.executable,
            __file__,
            "--path",
            path,
            "--out-json",
            out,
            "--per-split",
            str(args.per_split),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--batch-size",
            str(args.batch_size),
            "--dtype",
            args.dtype,
            "--draft",
            args.draft,
            "--model",
            args.model,
            "--data",
            args.data,
            "--ref-every",
            str(args.ref_every),
        ]
        + (["--quick"] if args.quick else [])
        + (extra or [])
    )
    print(f"running {path} path ...", flush=True)
    subprocess.run(cmd, check=True)
    res = json.loads(Path(out).read_text())
    if Path(out + ".npz").is_file():
        res["states"] = dict(np.load(out + ".npz"))
        os.unlink(out + ".npz")
    os.unlink(out)
    return res


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()}, torch {torch.__version__}, no GPU"


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny random LFM2, small sizes (about a minute)"
    )
    ap.add_argument(
        "--memory", action="store_true", help="peak RSS of streamed extraction, 2k vs 20k prompts"
    )
    ap.add_argument(
        "--per-split", type=int, default=None, help="rows per split per class (default 2)"
    )
    ap.add_argument(
        "--max-new-tokens", type=int, default=None, help="default 32 (SmolLM2), 8 (--quick)"
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument(
        "--draft",
        default="auto",
        choices=["auto", "on", "off"],
        help="generation.draft for the project path (default auto)",
    )
    ap.add_argument(
        "--model",
        default="demo",
        choices=["demo", "smollm2"],
        help="demo: SmolLM2 + the tool-calling LoRA adapter (params/demo.yaml); smollm2: without it",
    )
    ap.add_argument(
        "--data",
        default="alpaca",
        choices=["alpaca", "bfcl"],
        help="alpaca: the demo's Alpaca rows and one tool list (params/demo.yaml); bfcl: BFCL "
        "relevance rows, each with its own tools (params/bfcl.yaml)",
    )
    ap.add_argument(
        "--ref-every",
        type=int,
        default=1,
        help="run the seed loop's sweep on every K-th prompt and scale its time (default 1: all)",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out-json", help=argparse.SUPPRESS)
    ap.add_argument("--n-prompts", type=int, default=2000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.per_split = args.per_split or 2
    args.max_new_tokens = args.max_new_tokens or (8 if args.quick else 128)
    if args.ref_every < 1:
        ap.error("--ref-every needs K >= 1")
    if args.path:
        return child(args)
    if args.memory:
        return memory_report(args)

    ref = run_child(args, "reference")
    proj = run_child(args, "project")
    keys = sorted(ref["decisions"])  # the sampled generations
    agree = sum(ref["decisions"][k] == proj["decisions"].get(k) for k in keys)
    same = sum(ref["outputs"][k] == proj["outputs"].get(k) for k in keys)
    prefix = sum(ref["outputs"][k].startswith(proj["outputs"].get(k, "\x00")) for k in keys)
    g = proj["generation"]
    diff = [k for k in keys if ref["decisions"][k] != proj["decisions"].get(k)]
    rel = max(
        float(
            np.max(
                np.abs(ref["states"][s] - proj["states"][s])
                / (np.abs(ref["states"][s]).max(-1, keepdims=True))
            )
        )
        for s in SPLITS
    )
    model = (
        "tiny random LFM2 (4 blocks, hidden 64)"
        if args.quick
        else "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"
        + (
            " + the demo's tool-calling LoRA adapter (models/smollm2-135m-tools-lora, merged)"
            if args.model == "demo"
            else ""
        )
        + (
            "; BFCL relevance rows (params/bfcl.yaml), each prompt with its own tools"
            if args.data == "bfcl"
            else ""
        )
    )
    sampled = (
        f"; the reference sweep ran {ref['sampled']} of its {ref['generations']} generations "
        f"(one prompt in {args.ref_every}, {ref['sweep_measured_s']:.1f} s) and its time and tokens "
        "are scaled by generations"
        if args.ref_every > 1
        else ""
    )
    n = {s: len(ref["states"][s]) for s in SPLITS}
    rows = [
        ("extraction (all splits)", ref["extract_s"], proj["extract_s"]),
        ("sweep: baseline + 8 seed configs, VALID+TEST", ref["sweep_s"], proj["sweep_s"]),
        ("total", ref["extract_s"] + ref["sweep_s"], proj["extract_s"] + proj["sweep_s"]),
    ]
    lines = [
        f"# Benchmark: seed loop vs project path ({'quick' if args.quick else 'full'})",
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- machine: {machine()}",
        f"- model: {model}, {args.dtype}",
        "- prompts: "
        + ", ".join(f"{s} {n[s]}" for s in SPLITS)
        + f" ({'BFCL relevance rows' if args.data == 'bfcl' else 'bundled Alpaca rows'}, {args.per_split} per split per class, test x2)",
        f"- generation: greedy, max {args.max_new_tokens} new tokens, configs: baseline + the seed's eight (absolute alpha)",
        f"- project batch size: {args.batch_size}{sampled}",
        "",
        "| stage | reference (s) | project (s) | speed-up |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {a:.1f} | {b:.1f} | {a / b:.1f}x |" for name, a, b in rows],
        "",
        f"- generations run: reference {ref['generations']}, project {proj['generations']} "
        "(the rest reused from the cache: zero gates share the baseline, equal signed steering is shared)",
        f"- sweep tokens forwarded (a FLOP proxy; padding included, a cached prefix not, a position run "
        f"through k of the N blocks counts k/N): reference "
        f"{ref['tokens_forwarded']}, project {proj['tokens_forwarded']} "
        f"({ref['tokens_forwarded'] / max(proj['tokens_forwarded'], 1):.1f}x fewer)",
        f"- prompt-major: {g['prompt_prefills']} prompts prefilled once for all their rows, "
        f"{g['forks']} rows continued from a prompt's shared prefill; padding "
        f"{g['padded_tokens']} of {g['tokens_forwarded']} tokens forwarded "
        f"({100 * g['padded_tokens'] / max(g['tokens_forwarded'], 1):.1f}%)",
        f"- draft-verified decoding (generation.draft: {args.draft}): {g['drafted']} steered generations verified "
        f"against their baseline, {g['accepted_tokens']}/{g['draft_tokens']} draft tokens accepted, "
        f"{g['done_by_draft']} decided by the verify pass alone, {g['drafts_dropped']} drafts dropped (too few accepted); "
        f"{g.get('verified_from_block', 0)} verified through the blocks above L* only (blocks 0 .. L* once per prompt)",
        f"- outputs (sampled generations): project output identical to the reference's {same}/{len(keys)}, "
        f"a prefix of it (the project stops at a complete call) {prefix}/{len(keys)}",
        f"- peak RSS: reference {ref['peak_rss_mb']:.0f} MB, project {proj['peak_rss_mb']:.0f} MB",
        f"- L*: reference {ref['layer']}, project {proj['layer']}; max relative difference of extracted states {rel:.2e}",
        f"- per-prompt triggered decisions identical: {agree}/{len(keys)} ({100 * agree / len(keys):.1f}%)",
        f"- tool calls triggered (sampled generations): reference {sum(ref['decisions'].values())}, "
        f"project {sum(proj['decisions'][k] for k in keys)} of {len(keys)}",
    ]
    if diff:
        lines.append(f"- differing decisions: {', '.join(diff[:20])}")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    if args.quick:
        out = out.with_name(out.stem + "_quick.md")
    elif args.model == "smollm2":
        out = out.with_name(out.stem + "_smollm2.md")
    if args.data == "bfcl" and not args.quick:
        out = out.with_name(out.stem + "_bfcl.md")
    write_keeping_notes(out, text)
    print(f"written to {out}")


NOTES_MARKER = "## Analysis"


def write_keeping_notes(path: Path, text: str) -> None:
    """Write the measured part; keep a hand-written section that starts with NOTES_MARKER."""
    old = path.read_text() if path.is_file() else ""
    notes = old[old.index(NOTES_MARKER) :] if NOTES_MARKER in old else ""
    path.write_text(text + ("\n" + notes if notes else ""))


def memory_report(args):
    rows = []
    for n in (2000, 20000):
        args.n_prompts = n
        rows.append(run_child(args, "memory", ["--n-prompts", str(n)]))
    lines = [
        "# Streamed extraction memory (tiny random LFM2, batch 64)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}",
        "",
        "| prompts | states file (MB) | peak RSS (MB) | RSS before extraction (MB) | seconds |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['n']} | {r['file_mb']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} | {r['seconds']:.1f} |"
            for r in rows
        ],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out).with_name("RESULTS_memory.md")
    write_keeping_notes(out, text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
