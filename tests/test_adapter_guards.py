"""Applying an adapter safely: steering per call (threads), padding without a mask, unsigned
bundles, numpy scalars, empty inputs and batch sizes, and alpha's upper bound."""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest
import torch
import yaml
from helpers_online import write_adapter

from asa_lib import ASA, AdapterError
from asa_lib.cli import main
from asa_lib.engine.extract import extract_states
from asa_lib.engine.generate import GenerationSettings
from asa_lib.method.bundle import MAX_MEAN_NORM, BundleError, load_bundle
from asa_lib.method.gate import alpha_effective
from asa_lib.method.online import OnlineGate, SteeringError, decide_prompts
from asa_lib.model.load import decoder_blocks
from asa_lib.params import ParamsError, PromptParams, check_config_values, params_from_dict
from conftest import PARAMS, ROOT


@pytest.fixture(scope="module")
def lm(tiny_params):
    """The tiny model as ``asa generate`` loads it (load_params_model: the params' seed)."""
    from asa_lib.model.load import load_params_model

    return load_params_model(tiny_params)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, lm, tiny_params):
    run = tmp_path_factory.mktemp("run")
    folder, f, config = write_adapter(run, lm, tiny_params)
    return {"folder": folder, "f": f, "config": config}


def _generate(lm, enc):
    return lm.model.generate(
        **enc, max_new_tokens=4, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
    )


def test_threads_in_one_steering_block_are_each_steered_once(adapter, lm):
    asa = ASA.load(adapter["folder"], alpha=2.0)  # strong enough to change every steered output
    prompts = adapter["f"].eval_prompts
    gates = [d.gate for d in asa.decide(lm, None, prompts, rendered=True)]
    steered = [i for i, g in enumerate(gates) if g != 0]
    plain = [i for i, g in enumerate(gates) if g == 0]
    assert len(steered) >= 4 and len(plain) >= 4
    # four calls of two rows each, every one with a steered row
    groups = [[steered[k], plain[k]] for k in range(4)]
    tok = lm.tokenizer
    encs = [
        tok([prompts[i] for i in g], return_tensors="pt", padding=True, add_special_tokens=False)
        for g in groups
    ]
    alone = []  # each call steered on its own: the reference
    for enc in encs:
        with asa.steering(lm) as session:
            alone.append((_generate(lm, enc), session.last))
    for (out, decisions), g, enc in zip(alone, groups, encs):
        assert [d.gate for d in decisions] == [gates[i] for i in g]
        assert not torch.equal(out, _generate(lm, enc))  # steering changes every call

    # All four prefills reach block 0 before any reaches L*: the calls are in flight at once.
    barrier = threading.Barrier(len(encs), timeout=120)
    waited = threading.local()

    def meet(_module, _inp):
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()

    results: list = [None] * len(encs)

    def work(k):
        try:
            results[k] = (_generate(lm, encs[k]), session.last)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            results[k] = e

    first = decoder_blocks(lm.model)[0]
    with asa.steering(lm) as session:
        handle = first.register_forward_pre_hook(meet)
        try:
            threads = [threading.Thread(target=work, args=(k,)) for k in range(len(encs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            handle.remove()
    for k, r in enumerate(results):
        if isinstance(r, SteeringError):  # refused is allowed; silently unsteered is not
            continue
        assert not isinstance(r, BaseException), r
        out, decisions = r
        assert torch.equal(out, alone[k][0]), f"call {k} was not steered as it is alone"
        assert decisions == alone[k][1]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert len(session.calls) == len(done) == len(encs)  # one record per call, none refused here
    assert sorted(map(str, session.calls)) == sorted(str(a[1]) for a in alone)


def test_a_call_whose_prefill_runs_in_another_thread_is_refused(adapter, lm, monkeypatch):
    asa = ASA.load(adapter["folder"])
    model, tok = lm.model, lm.tokenizer
    forward = model.forward

    def in_a_worker_thread(*args, **kwargs):  # as nn.DataParallel runs its replicas
        box = []
        t = threading.Thread(target=lambda: box.append(forward(*args, **kwargs)))
        t.start()
        t.join()
        return box[0]

    enc = tok(adapter["f"].eval_prompts[:2], return_tensors="pt", padding=True)
    with asa.steering(lm) as session:
        monkeypatch.setattr(model, "forward", in_a_worker_thread)
        with pytest.raises(SteeringError, match="was not steered"):
            _generate(lm, enc)
        monkeypatch.undo()
        _generate(lm, enc)  # the same call in this thread: steered
    assert len(session.calls) == 1 and "forward" not in vars(model)


def test_a_padded_batch_without_an_attention_mask_is_refused(adapter, lm):
    asa = ASA.load(adapter["folder"])
    model, tok = lm.model, lm.tokenizer
    prompts = adapter["f"].eval_prompts[:3]
    assert len({len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}) > 1
    for side in ("right", "left"):
        tok.padding_side = side
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = "left"
        with asa.steering(lm) as session:
            for args, kwargs in (((), {"input_ids": enc["input_ids"]}), ((enc["input_ids"],), {})):
                with pytest.raises(SteeringError, match="no attention_mask") as e:
                    model.generate(*args, **kwargs, max_new_tokens=2)  # keyword or positional
                assert len(str(e.value).splitlines()) == 1
        assert session.calls == []  # refused before anything ran
    # one prompt, no padding: a mask is not needed
    one = tok(prompts[:1], return_tensors="pt", add_special_tokens=False)
    with asa.steering(lm) as session:
        model.generate(input_ids=one["input_ids"], max_new_tokens=2, pad_token_id=0)
    assert len(session.calls) == 1


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    """tiny.yaml with its data path made absolute, for ``asa generate``."""
    d = yaml.safe_load((PARAMS / "tiny.yaml").read_text())
    d["data"]["source"] = str(ROOT / "data" / "alpaca_subset.jsonl.xz")
    p = tmp_path_factory.mktemp("params") / "tiny.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def run_cli(capsys, *args):
    code = main(["generate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err.strip()


def _one_line_error(code, out, err, msg):
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("asa: error:") and msg in err and len(err.splitlines()) == 1, err


def _unsign(folder, edit=None):
    p = folder / "adapter.json"
    meta = json.loads(p.read_text())
    del meta["sha256"]
    if edit:
        edit(meta)
    p.write_text(json.dumps(meta))


def test_a_bundle_without_its_sha256_is_refused_unless_unsigned_is_allowed(
    adapter, tmp_path, capsys, params_file
):
    folder = tmp_path / "chosen_adapter"
    shutil.copytree(adapter["folder"], folder)
    assert len(json.loads((folder / "adapter.json").read_text())["sha256"]) == 64  # as written
    _unsign(folder, lambda m: m["config"].update(tau=0.51))  # and then edited
    with pytest.raises(BundleError, match="no sha256: an unsigned bundle"):
        load_bundle(folder)
    with pytest.raises(AdapterError, match="no sha256.*allow_unsigned=True"):
        ASA.load(folder)
    _one_line_error(
        *run_cli(capsys, "--adapter", folder, "--params", params_file, "Hi"), "no sha256"
    )
    # the documented opt-in loads it (and the edit goes undetected: that is what unsigned means)
    assert load_bundle(folder, allow_unsigned=True).sha256 == ""
    assert ASA.load(folder, allow_unsigned=True).tau == 0.51
    code, out, err = run_cli(
        capsys,
        "--adapter",
        folder,
        "--params",
        params_file,
        "--allow-unsigned",
        "--max-new-tokens",
        "2",
        "--json",
        "Hi",
    )
    assert code == 0 and json.loads(out)["adapter"]["tau"] == 0.51, err
    # a sha256 that is there must still match, also with the opt-in
    signed = tmp_path / "signed"
    shutil.copytree(adapter["folder"], signed)
    p = signed / "adapter.json"
    p.write_text(p.read_text().replace('"alpha": 0.5', '"alpha": 0.6'))
    with pytest.raises(AdapterError, match="sha256 in adapter.json does not match"):
        ASA.load(signed, allow_unsigned=True)


def test_numpy_scalars_are_numbers_for_tau_alpha_beta(adapter, tiny_params):
    d = tiny_params.to_dict()
    d["sweep"][0].update(tau=np.float32(0.7), alpha=np.float32(0.5), beta=np.float64(0.25))
    d["generation"]["batch_size"] = np.int64(4)
    p = params_from_dict(d, base_dir=PARAMS, check_files=False)
    c = p.sweep[0]
    assert (c.tau, c.alpha, c.beta) == (float(np.float32(0.7)), 0.5, 0.25)
    assert {type(c.tau), type(c.alpha), type(c.beta)} == {float}
    assert p.generation.batch_size == 4 and type(p.generation.batch_size) is int
    check_config_values(tau=np.float32(0.7), alpha=np.int64(2), beta=np.float16(0.5))
    for value, msg in (
        (np.float32(1.5), "sweep[0].tau: 1.5 is outside the allowed range [0.5, 1)"),
        (np.bool_(True), "sweep[0].tau: expected a number"),
    ):  # still range- and type-checked
        d["sweep"][0]["tau"] = value
        with pytest.raises(ParamsError, match=re.escape(msg)):
            params_from_dict(d, base_dir=PARAMS, check_files=False)
    # the API: overrides and a whole config in numpy scalars
    asa = ASA.load(
        adapter["folder"], tau=np.float32(0.7), alpha=np.float32(0.5), beta=np.float32(0.5)
    )
    assert asa.tau == pytest.approx(0.7) and asa.alpha == 0.5 and asa.beta == 0.5
    assert asa.alpha_eff == pytest.approx(adapter["config"]["alpha_eff"], rel=1e-12)
    assert {type(v) for v in (asa.tau, asa.alpha, asa.beta, asa.alpha_eff)} == {float}
    b = asa.bundle
    mine = ASA(b, tau=np.float64(0.7), alpha=np.float32(1.0), alpha_eff=np.float32(1.0))
    assert mine.alpha_eff == 1.0 and mine.gate.tau == pytest.approx(0.7)
    with pytest.raises(AdapterError, match=re.escape("tau 1.0 is outside the allowed range")):
        ASA.load(adapter["folder"], tau=np.float32(1.0))


def test_no_inputs_give_no_decisions_and_a_bad_batch_size_is_one_error(
    adapter, lm, capsys, params_file, tmp_path
):
    asa = ASA.load(adapter["folder"])
    assert asa.decide(lm, None, []) == [] and asa.generate(lm, None, []) == []
    assert len(asa.decide(lm, None, ["Hi", "Bye"], batch_size=np.int64(1))) == 2
    for bad in (0, -1, 2.0, True, "8"):
        msg = f"^batch_size: {re.escape(repr(bad))} is not a whole number >= 1$"
        for fn in (asa.decide, asa.generate):
            with pytest.raises(ParamsError, match=msg):
                fn(lm, None, ["Hi"], batch_size=bad)
    with pytest.raises(ParamsError, match="batch_size: 0 is not a whole number >= 1"):
        decide_prompts(lm, ["Hi"], asa.gate, 0)
    with pytest.raises(ParamsError, match="batch_size: 0 is not a whole number >= 1"):
        extract_states(lm, ["Hi"], batch_size=0)
    with pytest.raises(ParamsError, match="batch_size: 0 is not a whole number >= 1"):
        GenerationSettings(max_new_tokens=2, batch_size=0, markers=PromptParams())
    # the command line takes its batch sizes from the params file
    for section in ("generation", "extraction"):
        d = yaml.safe_load(params_file.read_text())
        d[section]["batch_size"] = 0
        p = tmp_path / f"{section}.yaml"
        p.write_text(yaml.safe_dump(d, sort_keys=False))
        _one_line_error(
            *run_cli(capsys, "--adapter", adapter["folder"], "--params", p, "Hi"),
            f"{section}.batch_size",
        )


def test_alpha_has_an_upper_bound(adapter, tiny_params, capsys, params_file):
    folder, b = adapter["folder"], adapter["f"].bundle
    norm = b.cal_mean_norm
    # at the bound: loads (the adapter's unit is relative)
    assert ASA.load(folder, alpha=10.0).alpha_eff == pytest.approx(10 * norm, rel=1e-12)
    assert ASA.load(folder, alpha=10 * norm, alpha_unit="absolute").alpha_eff == 10 * norm
    for kw, msg in (
        ({"alpha": 1e40}, "alpha 1e+40 is above the upper bound 10 (relative alpha: alpha_eff"),
        ({"alpha": 10.5}, "alpha 10.5 is above the upper bound 10 (relative alpha"),
        ({"alpha": 1e40, "alpha_unit": "absolute"}, "alpha 1e+40 is above the upper bound 1e+07"),
        (
            {"alpha": 11 * norm, "alpha_unit": "absolute"},
            f"is above the upper bound: alpha_eff at most 10 x the mean state norm at L* "
            f"({norm:.4g}), {10 * norm:.4g}",
        ),
    ):
        with pytest.raises(AdapterError, match=re.escape(msg)):
            ASA.load(folder, **kw)
    with pytest.raises(ParamsError, match="alpha_eff .* is above the upper bound"):
        OnlineGate(b, 0.6, 11 * norm, 0.0)
    with pytest.raises(
        ParamsError, match=r"alpha 11 \(relative; alpha_eff .*\) is above the upper"
    ):
        alpha_effective(11, "relative", b)  # as the sweep (stage 06) computes alpha_eff
    # params: relative alpha <= 10; absolute alpha <= 1e7 until the bundle's norm is known
    for unit, alpha, msg in (
        ("relative", 10.5, "sweep[0].alpha: 10.5 is above the upper bound 10 (relative alpha"),
        ("absolute", 2e7, "sweep[0].alpha: 2e+07 is above the upper bound 1e+07 (absolute"),
    ):
        d = tiny_params.to_dict()
        d["steering"]["alpha_unit"] = unit
        d["sweep"][0]["alpha"] = alpha
        with pytest.raises(ParamsError, match=re.escape(msg)):
            params_from_dict(d, base_dir=PARAMS, check_files=False)
        d["sweep"][0]["alpha"] = 10.0 if unit == "relative" else 1e7
        params_from_dict(d, base_dir=PARAMS, check_files=False)  # the bound itself is allowed
    # the command line's overrides: one line naming the bound, before the model is loaded
    for extra, msg in (
        (["--alpha", "1e40"], "alpha 1e+40 is above the upper bound 10"),
        (["--alpha", "1e40", "--alpha-unit", "absolute"], "alpha 1e+40 is above the upper bound"),
    ):
        _one_line_error(
            *run_cli(capsys, "--adapter", folder, "--params", params_file, *extra, "Hi"), msg
        )
    from asa_lib.params import MAX_ALPHA_EFF, MAX_RELATIVE_ALPHA  # the documented bounds

    assert MAX_RELATIVE_ALPHA == 10 and MAX_ALPHA_EFF == MAX_RELATIVE_ALPHA * MAX_MEAN_NORM


def test_an_adapter_that_records_its_format_and_tokenizer_refuses_others(adapter, lm, tmp_path):
    """An adapter checks prompts against its own recorded format, not a params.yaml beside it
    (a rerun rewrites that), and a model's tokenizer against its own recorded one."""
    import copy

    from asa_lib import ModelMismatchError
    from asa_lib.method.bundle import save_bundle
    from asa_lib.model.load import LoadedModel, tokenizer_digest
    from asa_lib.prompts import prompt_format_sha256

    own = ASA.load(adapter["folder"]).prompt
    other = copy.deepcopy(own)
    other.system_template = "You may call: {tools_json}"
    b = load_bundle(adapter["folder"])
    assert b.prompt_format_sha256 == "" and ASA.load(adapter["folder"], prompt=other)  # older
    b.prompt_format_sha256 = prompt_format_sha256(own)
    b.tokenizer_sha256 = tokenizer_digest(lm.tokenizer)
    folder = save_bundle(b, tmp_path / "run" / "chosen_adapter")
    assert load_bundle(folder).prompt_format_sha256 == prompt_format_sha256(own)
    with pytest.raises(AdapterError, match="fitted on prompts in another format"):
        ASA.load(folder, prompt=other)
    assert ASA.load(folder, prompt=own).prompt == own
    # the run's params.yaml beside it in another format (a rerun rewrote it): not taken
    d = yaml.safe_load((adapter["folder"].parent / "params.yaml").read_text())
    d["prompt"]["system_template"] = other.system_template
    (tmp_path / "run" / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert ASA.load(folder).prompt is None
    d["prompt"]["system_template"] = own.system_template
    (tmp_path / "run" / "params.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    assert ASA.load(folder).prompt == own
    # another tokenizer (other special tokens): refused, unless the mismatch is allowed
    tok = copy.deepcopy(lm.tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|not_in_the_run|>"]})
    assert tokenizer_digest(tok) != b.tokenizer_sha256
    other_lm = LoadedModel(lm.model, tok, lm.model_id, lm.device)
    asa = ASA.load(folder)
    asa.check_model(lm)
    with pytest.raises(ModelMismatchError, match="built with another tokenizer"):
        asa.check_model(other_lm)
    with pytest.raises(ModelMismatchError, match="built with another tokenizer"):
        asa.decide(lm.model, tok, ["Hi"], model_id=lm.model_id)
    ASA.load(folder, allow_model_mismatch=True).check_model(other_lm)
