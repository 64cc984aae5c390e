"""Prompt length: ``generation.max_prompt_tokens`` and the model's context, checked before the model
runs, in ``asa generate``, the API, generation and stage 02 (issue 23: a 100k-character prompt)."""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import yaml

from asa_lib.engine.generate import GenerationSettings, generate_all
from asa_lib.engine.prefix import PromptTooLongError, context_length, token_ids
from asa_lib.params import ParamsError, load_params
from asa_lib.prompts import render_prompts
from conftest import PARAMS, ROOT

LONG = "word " * 3000  # about 3,000 tokens on SmolLM2, 15,000 on the byte-level tiny tokenizer


@contextlib.contextmanager
def _no_forward(lm):
    """Fail if ``lm.model`` runs a forward pass inside the block."""

    def hook(*_):
        raise AssertionError("the model ran on a prompt that is too long")

    h = lm.model.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        h.remove()


def test_the_cap_is_a_validated_param(params_file):
    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    assert load_params(PARAMS / "tiny.yaml").generation.max_prompt_tokens == 4096  # the default
    d["data"]["source"] = "data/alpaca_subset.jsonl.xz"
    d["generation"]["max_prompt_tokens"] = 0
    with pytest.raises(ParamsError, match="generation.max_prompt_tokens: must be > 0"):
        load_params(params_file(d))


def test_generation_refuses_a_prompt_over_the_cap_before_the_model_runs(tiny_lm, tiny_params):
    prompts = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, ["Hi", LONG])
    n = [len(x) for x in token_ids(tiny_lm, prompts)]
    settings = GenerationSettings(4, 2, tiny_params.prompt, max_prompt_tokens=n[1] - 1)
    with _no_forward(tiny_lm), pytest.raises(PromptTooLongError) as e:
        generate_all(tiny_lm, prompts, settings)
    assert str(e.value) == (
        f"prompt 2 has {n[1]} tokens, more than the {n[1] - 1} allowed: "
        f"generation.max_prompt_tokens is {n[1] - 1}"
    )
    # at the cap it runs
    out, _ = generate_all(
        tiny_lm, prompts, GenerationSettings(2, 2, tiny_params.prompt, max_prompt_tokens=n[1])
    )
    assert len(out) == 2


def test_the_models_context_limits_prompt_and_new_tokens(smol_lm, demo_params):
    ctx = context_length(smol_lm)  # the tokenizer's model_max_length is transformers' "unset"
    assert ctx == (smol_lm.model.config.max_position_embeddings, "max_position_embeddings")
    prompt = render_prompts(smol_lm.tokenizer, demo_params.prompt, [LONG * 3])
    n = len(token_ids(smol_lm, prompt)[0])
    assert n > ctx[0]
    settings = GenerationSettings(32, 1, demo_params.prompt, max_prompt_tokens=None)
    with _no_forward(smol_lm), pytest.raises(PromptTooLongError) as e:
        generate_all(smol_lm, prompt, settings)
    assert str(e.value) == (
        f"prompt 1 has {n} tokens, more than the {ctx[0] - 32} allowed: the model's context is "
        f"{ctx[0]} tokens (max_position_embeddings), 32 of them for max_new_tokens"
    )


def test_the_api_refuses_long_prompts_before_the_model_runs(tiny_lm, tiny_params, tmp_path):
    from helpers_online import write_adapter

    from asa_lib import ASA

    folder, _, _ = write_adapter(tmp_path / "run", tiny_lm, tiny_params)
    asa = ASA.load(folder, prompt=tiny_params.prompt)
    with _no_forward(tiny_lm):
        with pytest.raises(
            PromptTooLongError, match="prompt 2 has .* generation.max_prompt_tokens is 4096"
        ):
            asa.generate(tiny_lm, None, ["Hi", LONG], max_new_tokens=2)
        with pytest.raises(PromptTooLongError, match="prompt 1 has .*max_prompt_tokens is 100"):
            asa.decide(tiny_lm, None, [LONG], max_prompt_tokens=100)
    # None: only the model's context (128,000 for the tiny LFM2) limits them
    assert len(asa.decide(tiny_lm, None, [LONG], max_prompt_tokens=None)) == 1


def test_asa_generate_names_the_limit_in_one_line(tmp_path, capsys, tiny_lm, tiny_params):
    from helpers_online import write_adapter

    from asa_lib.cli import main
    from asa_lib.model.load import load_params_model

    # the adapter is built on the model the command loads (the tiny model of the params' seed:
    # the model check compares the weights)
    folder, _, _ = write_adapter(tmp_path / "run", load_params_model(tiny_params), tiny_params)
    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "alpaca_subset.jsonl.xz")
    d["generation"]["max_prompt_tokens"] = 500
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    code = main(["generate", "--adapter", str(folder), "--params", str(p), "Hi", "x" * 100_000])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("asa: error: prompt 2 has "), err
    assert "generation.max_prompt_tokens is 500" in err and len(err.strip().splitlines()) == 1


def test_stage_02_refuses_a_row_that_is_too_long_naming_it(tmp_path, tiny_lm, tiny_params):
    from asa_lib.data import make_splits_from_params, render_samples, write_splits
    from asa_lib.layout import RunDir
    from asa_lib.run.extraction import extract_run

    params = copy.deepcopy(tiny_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = make_splits_from_params(params)
    run = RunDir(tmp_path / "run")
    write_splits(run, result)
    lengths = {
        (split, x.id): len(ids)
        for split, xs in result.samples.items()
        for x, ids in zip(
            xs, token_ids(tiny_lm, render_samples(tiny_lm.tokenizer, params.prompt, xs, run))
        )
    }
    (split, row), longest = max(lengths.items(), key=lambda kv: kv[1])
    params.generation.max_prompt_tokens = longest - 1
    if sorted(lengths.values())[-2] == longest:
        pytest.skip("two rows share the longest length")
    with _no_forward(tiny_lm), pytest.raises(PromptTooLongError) as e:
        extract_run(tiny_lm, params, run.root)
    assert str(e.value) == (
        f"{split} row {row!r} has {longest} tokens, more than the {longest - 1} allowed: "
        f"generation.max_prompt_tokens is {longest - 1}"
    )
    assert not any(run.states(s).exists() for s in result.samples)
