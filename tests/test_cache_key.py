"""The generation cache's key covers everything that decides an output, and nothing else.

An output is decided by the model's weights (the tiny model's seed is
``data.seed``), its tokenizer and generation config, the rendered prompt (with
its tools), the steering delta and the block it is added at, and the settings'
``max_new_tokens`` and call markers. Each change below regenerates exactly the
rows it touches (the others come from the cache), and the outputs always equal
a generation without a cache. A cache file that is not a database, or cannot
be written, is one error line that names it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import subprocess
import warnings

import numpy as np
import pytest
from test_records import _bundle_on

from asa_lib import data
from asa_lib.engine.cache import CacheError, GenerationCache
from asa_lib.engine.generate import GenerationSettings, generate_all
from asa_lib.layout import RunDir
from asa_lib.model.load import (
    LoadedModel,
    build_tiny_lfm2,
    build_tiny_tokenizer,
    load_params_model,
    tokenizer_digest,
)
from asa_lib.params import MAX_RELATIVE_ALPHA, SweepConfig, baseline_config
from asa_lib.prompts import render_prompts
from asa_lib.run.extraction import extract_run
from asa_lib.run.sweep import run_config

TEXTS = ["Compute 17 * 23", "Write a haiku", "What is the capital of Peru?", "Sort [3, 1, 2]"]
OTHER_TOOL = {
    "name": "web_search",
    "description": "Search the web.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}


class Rows:
    """generate_all through one cache, recording which rows were decoded now."""

    def __init__(self, cache: GenerationCache):
        self.cache = cache

    def __call__(self, lm, prompts, settings, deltas, layer):
        decoded: list[int] = []
        out, n = generate_all(
            lm, prompts, settings, deltas, layer, self.cache, on_batch=decoded.extend
        )
        fresh, _ = generate_all(lm, prompts, settings, deltas, layer)  # no cache
        assert out == fresh  # whatever came from the cache is what would be generated
        assert n == len(decoded)
        return set(decoded)


def test_each_input_of_an_output_regenerates_exactly_its_rows(tiny_lm, tiny_params, tmp_path):
    pp = tiny_params.prompt
    tools = [None, None, None, [OTHER_TOOL]]  # row 3 has its own tool list
    prompts = render_prompts(tiny_lm.tokenizer, pp, TEXTS, tools)
    rng = np.random.default_rng(0)
    deltas = np.zeros((len(TEXTS), tiny_lm.hidden_size), np.float32)
    deltas[2:] = rng.normal(size=(2, tiny_lm.hidden_size)) * 20  # rows 2, 3 steered; 0, 1 not
    settings = GenerationSettings(max_new_tokens=4, batch_size=8, markers=pp)
    cache = GenerationCache(tmp_path / "gen.sqlite", {"run": "r"})
    rows, all_rows, steered = Rows(cache), set(range(len(TEXTS))), {2, 3}
    try:
        assert rows(tiny_lm, prompts, settings, deltas, 1) == all_rows
        assert rows(tiny_lm, prompts, settings, deltas, 1) == set()  # nothing changed

        # the weights: the tiny model of another seed, under the same id
        m, tok = build_tiny_lfm2(seed=1)
        other = LoadedModel(m, tok, tiny_lm.model_id, tiny_lm.device)
        assert other.fingerprint == tiny_lm.fingerprint and other.weights != tiny_lm.weights
        assert rows(other, prompts, settings, deltas, 1) == all_rows

        # the block: only the steered rows (the unsteered ones are the baseline at any block)
        assert rows(tiny_lm, prompts, settings, deltas, 2) == steered
        # the delta of one row
        moved = deltas.copy()
        moved[2] *= -1
        assert rows(tiny_lm, prompts, settings, moved, 1) == {2}
        # the tools of one row (its rendered prompt)
        own = render_prompts(tiny_lm.tokenizer, pp, TEXTS, [None, [OTHER_TOOL], None, [OTHER_TOOL]])
        assert rows(tiny_lm, own, settings, deltas, 1) == {1}
        # the run's tool list: every row rendered with it, not row 3 with its own
        pp2 = dataclasses.replace(pp, tools=[*pp.tools, OTHER_TOOL])
        run_tools = render_prompts(tiny_lm.tokenizer, pp2, TEXTS, tools)
        assert rows(tiny_lm, run_tools, settings, deltas, 1) == {0, 1, 2}

        # the generation settings that decide an output: every row
        longer = dataclasses.replace(settings, max_new_tokens=5)
        assert rows(tiny_lm, prompts, longer, deltas, 1) == all_rows
        pp3 = dataclasses.replace(pp, tool_call_end="</call>")
        ended = dataclasses.replace(settings, markers=pp3)
        assert rows(tiny_lm, prompts, ended, deltas, 1) == all_rows
        # how, not what: another batch size or no shared prefix gives the same outputs
        how = dataclasses.replace(settings, batch_size=3, share_prefix=False)
        assert rows(tiny_lm, prompts, how, deltas, 1) == set()
    finally:
        cache.close()


def test_the_tokenizer_is_in_the_key_but_not_the_padding_a_call_leaves_behind():
    tok = build_tiny_tokenizer()
    d = tokenizer_digest(tok)
    tok(["a", "bbb"], padding=True, truncation=True, max_length=2)  # sets the backend's state
    assert tokenizer_digest(tok) == d == tokenizer_digest(build_tiny_tokenizer())
    tok.add_tokens(["<|new|>"])
    assert tokenizer_digest(tok) != d


@pytest.fixture(scope="module")
def sweep_run(tiny_params, tmp_path_factory):
    """Stages 01-02 of the tiny preset (the model of its data.seed) and a random bundle on it."""
    run = RunDir(tmp_path_factory.mktemp("cache_run"))
    params = dataclasses.replace(
        tiny_params, data=dataclasses.replace(tiny_params.data, per_split_per_class=1)
    )
    lm = load_params_model(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.write_splits(run, data.make_splits_from_params(params))
    extract_run(lm, params, run)
    domains = sorted({x.domain for xs in data.read_splits(run).values() for x in xs})
    return {"run": run, "params": params, "lm": lm, "bundle": _bundle_on(lm, domains)}


def _drop_cache(run: RunDir) -> None:
    for suffix in ("", "-wal", "-shm"):
        run.cache.with_name(run.cache.name + suffix).unlink(missing_ok=True)


def _outputs(res: dict) -> list[str]:
    return [r["output"] for r in res["records"]]


def _generated(res: dict) -> dict[str, int]:
    return {s: v["generated_now"] for s, v in res["splits"].items()}


def test_a_rerun_with_another_data_seed_generates_anew(sweep_run):
    """BAD 1: data.seed is the tiny model's seed; its outputs were reused under the new seed."""
    run, params, lm, bundle = (sweep_run[k] for k in ("run", "params", "lm", "bundle"))
    _drop_cache(run)
    first = run_config(params, run, lm, bundle, baseline_config())
    # the same rows under data.seed + 1: the adapter is another model's, so allow it here
    p2 = dataclasses.replace(
        params,
        data=dataclasses.replace(params.data, seed=params.data.seed + 1),
        steering=dataclasses.replace(params.steering, allow_model_mismatch=True),
    )
    lm2 = load_params_model(p2)
    assert lm2.model_id == lm.model_id
    second = run_config(p2, run, lm2, bundle, baseline_config())
    _drop_cache(run)
    fresh = run_config(p2, run, lm2, bundle, baseline_config())
    assert _outputs(first) != _outputs(fresh)  # the seeds' models answer differently
    assert _outputs(second) == _outputs(fresh)
    assert _generated(second) == _generated(fresh) == _generated(first)  # all of them anew


def test_a_random_vector_moved_to_another_block_generates_anew(sweep_run):
    """BAD 2: vector random with an absolute alpha has the same delta at every block."""
    run, params, lm, bundle = (sweep_run[k] for k in ("run", "params", "lm", "bundle"))
    params = dataclasses.replace(
        params, steering=dataclasses.replace(params.steering, alpha_unit="absolute")
    )
    # as strong as the alpha bound allows (10 x the mean state norm at L*)
    strong = MAX_RELATIVE_ALPHA * bundle.cal_mean_norm
    config = SweepConfig("rnd", alpha=strong, gate="always", vector="random", seed=3)
    _drop_cache(run)
    at1 = run_config(params, run, lm, bundle, config)
    moved = dataclasses.replace(bundle, layer=2)
    at2 = run_config(params, run, lm, moved, config)
    assert at2["layer"] == 2
    _drop_cache(run)
    fresh = run_config(params, run, lm, moved, config)
    assert _outputs(at1) != _outputs(fresh)  # steering another block changes outputs
    assert _outputs(at2) == _outputs(fresh)
    assert _generated(at2) == _generated(fresh) == _generated(at1)


# ------------------------------------------------------------------ a cache that cannot be used


def test_a_garbage_cache_file_is_one_error_naming_it(sweep_run, tmp_path):
    path = tmp_path / "gen.sqlite"
    path.write_bytes(b"not a database\n" * 100)
    with pytest.raises(CacheError, match=f"generation cache {path} cannot be used.*delete it"):
        GenerationCache(path, {"run": "r"})
    # a database, but not a cache: its table has other columns
    db = sqlite3.connect(path.with_name("other.sqlite"))
    db.execute("CREATE TABLE gen (k TEXT)")
    db.commit()
    db.close()
    with pytest.raises(CacheError, match="other.sqlite cannot be used"):
        GenerationCache(path.with_name("other.sqlite"), {"run": "r"}).get_many(["x"])
    # through the sweep: the run's cache
    run, params, lm, bundle = (sweep_run[k] for k in ("run", "params", "lm", "bundle"))
    _drop_cache(run)
    run.cache.write_bytes(b"\x00garbage" * 64)
    try:
        with pytest.raises(CacheError, match=f"{run.cache} cannot be used") as e:
            run_config(params, run, lm, bundle, baseline_config())
        assert "\n" not in str(e.value)
    finally:
        _drop_cache(run)


def _read_only(path):
    """Make ``path`` read-only (root ignores file modes: then the immutable attribute)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return lambda: path.chmod(0o644)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
        pytest.skip("running as root without chattr +i: no way to make a file read-only")
    return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_cache_is_refused_when_opened_naming_it(tiny_lm, tiny_params, tmp_path):
    path = tmp_path / "gen.sqlite"
    settings = GenerationSettings(max_new_tokens=2, batch_size=8, markers=tiny_params.prompt)
    prompts = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, TEXTS[:2])
    cache = GenerationCache(path, {"run": "r"})
    generate_all(tiny_lm, prompts, settings, cache=cache)
    cache.close()
    undo = _read_only(path)
    try:
        with pytest.raises(CacheError, match=f"{path} cannot be used.*readonly.*make it writable"):
            GenerationCache(path, {"run": "r"})
    finally:
        undo()
    cache = GenerationCache(path, {"run": "r"})  # writable again: the rows are still there
    assert generate_all(tiny_lm, prompts, settings, cache=cache)[1] == 0
    cache.close()
