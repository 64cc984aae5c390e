"""The public API: loading a chosen adapter, checking the model, deciding and generating in one pass."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_online import write_adapter

from asa_lib import ASA, AdapterError, ModelMismatchError
from asa_lib.engine.generate import (
    GenerationSettings,
    generate_all,
)
from asa_lib.method.bundle import Bundle, save_bundle
from asa_lib.method.gate import compute_gates, steering_deltas
from asa_lib.model.load import decoder_blocks
from asa_lib.prompts import messages_for


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_lm, tiny_params):
    run = tmp_path_factory.mktemp("run")
    folder, f, config = write_adapter(run, tiny_lm, tiny_params)
    return {"folder": folder, "f": f, "config": config, "run": run}


def test_load_reads_the_chosen_config_and_the_run_prompt_format(adapter, tiny_params):
    c, cal_norm = adapter["config"], adapter["f"].bundle.cal_mean_norm
    asa = ASA.load(adapter["folder"])
    assert (asa.name, asa.tau, asa.alpha, asa.beta, asa.alpha_unit) == (
        "mine",
        c["tau"],
        0.5,
        0.5,
        "relative",
    )
    assert asa.alpha_eff == c["alpha_eff"] == pytest.approx(0.5 * cal_norm, rel=1e-12)
    assert asa.prompt == tiny_params.prompt  # from the run's params.yaml beside the folder
    o = ASA.load(adapter["folder"], tau=0.9, alpha=0.25, beta=0.0)
    assert (o.tau, o.beta, o.name) == (0.9, 0.0, "mine (overridden)")
    assert o.alpha_eff == pytest.approx(0.25 * cal_norm, rel=1e-12)  # the config's unit: relative
    assert o.gate.tau == 0.9 and o.gate.alpha_eff == o.alpha_eff
    a = ASA.load(adapter["folder"], alpha=3.0, alpha_unit="absolute")
    assert a.alpha_eff == 3.0 and a.tau == c["tau"]


def _edit_json(folder, fn):
    p = folder / "adapter.json"
    meta = json.loads(p.read_text())
    fn(meta)
    p.write_text(json.dumps(meta))


def _flip_byte(folder):
    p = folder / "adapter.safetensors"
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's data: still a valid file
    p.write_bytes(bytes(data))


TAMPER = {
    "a tensor value changed": (_flip_byte, "sha256"),
    "the chosen tau edited": (
        lambda f: _edit_json(f, lambda m: m["config"].update(tau=0.99)),
        "sha256",
    ),
    "the model id edited": (lambda f: _edit_json(f, lambda m: m.update(model_id="x")), "sha256"),
    "a tensor shape edited": (
        lambda f: _edit_json(f, lambda m: m["tensors"]["scaler.mean"].update(shape=[3])),
        "scaler.mean",
    ),
    "truncated tensors": (
        lambda f: (f / "adapter.safetensors").write_bytes(
            (f / "adapter.safetensors").read_bytes()[:50]
        ),
        "not a readable safetensors file",
    ),
    "adapter.json not JSON": (lambda f: (f / "adapter.json").write_text("{oops"), "not valid JSON"),
    "adapter.json without tensors": (
        lambda f: _edit_json(f, lambda m: m.pop("tensors")),
        "missing field 'tensors'",
    ),
    "adapter.safetensors deleted": (lambda f: (f / "adapter.safetensors").unlink(), "is missing"),
}


@pytest.mark.parametrize("what", list(TAMPER))
def test_a_tampered_adapter_is_refused(adapter, tmp_path, what):
    import shutil

    folder = tmp_path / "chosen_adapter"
    shutil.copytree(adapter["folder"], folder)
    ASA.load(folder)  # intact: loads
    edit, msg = TAMPER[what]
    edit(folder)
    with pytest.raises(AdapterError, match=msg):
        ASA.load(folder)


def test_missing_unusable_and_inconsistent_adapters_are_refused(adapter, tmp_path):
    with pytest.raises(AdapterError, match="no such adapter folder"):
        ASA.load(tmp_path / "nowhere")
    b = adapter["f"].bundle
    save_bundle(b, tmp_path / "bare")  # a bundle/ folder: no chosen config
    with pytest.raises(AdapterError, match="no chosen config"):
        ASA.load(tmp_path / "bare")
    assert (
        ASA.load(tmp_path / "bare", tau=0.7, alpha=2.0).alpha_eff == 2.0
    )  # absolute without a unit
    bad = dict(adapter["config"], alpha_eff=adapter["config"]["alpha_eff"] * 2)
    save_bundle(b, tmp_path / "odd", extra={"config": bad})  # a valid hash, an inconsistent config
    with pytest.raises(AdapterError, match="does not match alpha"):
        ASA.load(tmp_path / "odd")
    for kw, msg in (
        ({"tau": 1.0}, "tau 1.0"),
        ({"alpha": -1.0}, "alpha -1.0"),
        ({"beta": 2.0}, "beta 2.0"),
    ):
        with pytest.raises(AdapterError, match=msg):
            ASA.load(adapter["folder"], **kw)


def _random_bundle(H: int, num_layers: int, model_id: str) -> Bundle:
    rng = np.random.default_rng(0)
    v = rng.normal(size=H).astype(np.float32)
    return Bundle(
        layer=1,
        domains=["a", "b"],
        router_classes=["a", "b"],
        scaler_mean=np.zeros(H),
        scaler_scale=np.ones(H),
        router_coef=rng.normal(size=(1, H)),
        router_intercept=np.zeros(1),
        probes={"a": (rng.normal(size=H), 0.0)},
        vectors={"global": v / np.linalg.norm(v)},
        model_id=model_id,
        hidden_size=H,
        num_layers=num_layers,
        cal_mean_norm=1.0,
    )


def test_the_model_must_be_the_bundles(adapter, tiny_lm):
    asa = ASA.load(adapter["folder"])
    asa.check_model(tiny_lm)
    block = decoder_blocks(tiny_lm.model)[asa.bundle.layer]
    n_hooks = len(block._forward_hooks)
    cases = [
        (
            replace(asa, bundle=replace(asa.bundle, model_id="other/model")),
            {},
            "built on 'other/model'",
        ),
        (asa, {"model_id": "tiny-lfm2-v2"}, "not on 'tiny-lfm2-v2'.*model_id= vouches"),
        (ASA(_random_bundle(8, 4, "tiny-lfm2"), tau=0.6, alpha=1.0), {}, "hidden size 8, 4 blocks"),
        (
            ASA(_random_bundle(64, 6, "tiny-lfm2"), tau=0.6, alpha=1.0),
            {},
            "hidden size 64, 6 blocks",
        ),
    ]
    for a, kw, msg in cases:
        with pytest.raises(ModelMismatchError, match=msg):
            a.check_model(tiny_lm, **kw)
        with pytest.raises(ModelMismatchError, match=msg), a.steering(tiny_lm, **kw):
            pass
        with pytest.raises(ModelMismatchError, match=msg):
            a.decide(tiny_lm, None, ["Hi"], **kw)
    assert len(block._forward_hooks) == n_hooks and "generate" not in vars(tiny_lm.model)
    # a bare module carries no id the bundle knows: the caller vouches for it with model_id
    with pytest.raises(ModelMismatchError, match="built on 'tiny-lfm2'"):
        asa.check_model(tiny_lm.model)
    asa.check_model(tiny_lm.model, model_id="tiny-lfm2")


def test_the_model_check_is_the_bundles_and_compares_the_fingerprint(adapter, tiny_lm):
    asa = ASA.load(adapter["folder"])
    fp = tiny_lm.fingerprint
    same = replace(asa, bundle=replace(asa.bundle, model_fingerprint=fp))
    same.check_model(tiny_lm)
    same.check_model(tiny_lm.model, model_id="tiny-lfm2")  # a bare module, vouched for
    other = replace(asa, bundle=replace(asa.bundle, model_fingerprint="0" * 64))
    for kw in ({}, {"model_id": "tiny-lfm2"}):  # vouching names the model, not its weights
        with pytest.raises(ModelMismatchError, match="other names, shapes or dtypes"):
            other.check_model(tiny_lm if not kw else tiny_lm.model, **kw)
    with pytest.raises(ModelMismatchError, match="other names, shapes or dtypes"):
        other.decide(tiny_lm, None, ["Hi"])
    # the explicit override checks the shapes only: another id, another fingerprint pass
    allowed = replace(other, allow_model_mismatch=True)
    allowed.check_model(tiny_lm)
    allowed.check_model(tiny_lm, model_id="something-else")
    wide = ASA(_random_bundle(8, 4, "tiny-lfm2"), tau=0.6, alpha=1.0, allow_model_mismatch=True)
    with pytest.raises(ModelMismatchError, match="hidden size 8, 4 blocks"):
        wide.check_model(tiny_lm)  # shapes must fit in any case
    assert ASA.load(adapter["folder"], allow_model_mismatch=True).allow_model_mismatch


def test_decide_generate_and_steering_agree_with_the_two_pass_path(adapter, tiny_lm, tiny_params):
    asa = ASA.load(adapter["folder"])
    f, pp = adapter["f"], tiny_params.prompt
    texts, prompts, h = f.eval_texts, f.eval_prompts, f.h_eval
    two = compute_gates(asa.bundle, h, asa.tau)
    assert 0 in two.gate and np.any(two.gate != 0)
    model, tok = tiny_lm.model, tiny_lm.tokenizer
    by_text = asa.decide(tiny_lm, None, texts)
    by_messages = asa.decide(model, tok, [messages_for(pp, t) for t in texts], model_id="tiny-lfm2")
    by_prompt = asa.decide(tiny_lm, None, prompts, rendered=True)
    for dec in (by_text, by_messages, by_prompt):
        assert [d.routed for d in dec] == two.routed and [d.gate for d in dec] == two.gate.tolist()
        np.testing.assert_allclose([d.p_tool for d in dec], two.p_tool, atol=1e-5, rtol=0)
    one = asa.decide(tiny_lm, None, texts[3])  # a single input: a list of one
    assert len(one) == 1 and one[0].gate == two.gate[3]

    gens = asa.generate(tiny_lm, None, texts, max_new_tokens=6)
    deltas = steering_deltas(asa.bundle, two, asa.alpha_eff, asa.beta)
    want, _ = generate_all(
        tiny_lm,
        prompts,
        GenerationSettings(max_new_tokens=6, batch_size=8, markers=pp),
        deltas,
        layer=asa.bundle.layer,
    )
    assert [g.output for g in gens] == want
    assert [g.decision.gate for g in gens] == two.gate.tolist()

    enc = tok(prompts[:5], return_tensors="pt", padding=True, add_special_tokens=False)
    with asa.steering(tiny_lm) as session:
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    assert [d.gate for d in session.last] == two.gate[:5].tolist()
    assert "generate" not in vars(model)


def test_text_inputs_need_the_prompt_format(adapter, tiny_lm):
    asa = ASA.load(adapter["folder"])
    bare = replace(asa, prompt=None)
    with pytest.raises(AdapterError, match="prompt format"):
        bare.decide(tiny_lm, None, ["Hi"])
    assert len(bare.decide(tiny_lm, None, [[{"role": "user", "content": "Hi"}]])) == 1


# ----------------------------------------------------------------------------- round 4

B1 = Path(__file__).parent / "fixtures" / "redteam4" / "b1_chat_template_drops_tools"


def test_a_template_that_ignores_tools_is_refused_by_the_api_evaluate_and_generate(
    adapter, tiny_lm, tmp_path, capsys
):
    """b1: ``tools_in: chat_template`` with the tiny template (it ignores ``tools=``): the API
    refuses text inputs, ``asa evaluate`` and ``asa generate`` refuse in one line naming
    ``tools_in: system_text``, and evaluate writes no output folder."""
    import shutil

    from asa_lib.cli import main
    from asa_lib.params import ParamsError, load_params

    for f in B1.iterdir():
        shutil.copy(f, tmp_path / f.name)
    params = tmp_path / "params.yaml"
    pp = load_params(params).prompt
    with pytest.raises(ParamsError, match="tools_in: system_text"):
        ASA.load(adapter["folder"], prompt=pp).decide(tiny_lm, None, ["Hi"])
    lone = shutil.copytree(adapter["folder"], tmp_path / "lone" / "chosen_adapter")
    out = tmp_path / "eval"
    argv = ["--adapter", str(lone), "--params", str(params)]
    data = ["--data", str(tmp_path / "rows.jsonl"), "--out-dir", str(out)]
    assert main(["evaluate", *argv, *data]) == 2
    assert main(["generate", *argv, "What is 2 + 2?"]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and not out.exists()
    for err in errs:
        assert err.startswith("asa: error: prompt.tools_in: chat_template")
        assert "tools_in: system_text" in err


def test_a_chat_message_without_content_is_one_error_naming_it(adapter, tiny_lm):
    """u10: a chat message without ``content`` (or not a string) is a ``ValueError`` naming the
    input and the message, not a jinja ``UndefinedError``."""
    asa = ASA.load(adapter["folder"])
    ok = [{"role": "user", "content": "Hi"}]
    with pytest.raises(ValueError, match=r"^input 0, message 0 \(role 'user'\): no 'content'"):
        asa.decide(tiny_lm, None, [[{"role": "user"}]])
    with pytest.raises(ValueError, match=r"^input 1, message 1 \(role 'user'\): no 'content'"):
        asa.generate(tiny_lm, None, [ok, [ok[0], {"role": "user"}]], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"^input 0, message 0 \(role 'user'\): 'content' is"):
        asa.decide(tiny_lm, None, [[{"role": "user", "content": 3}]])


def _with_blocks(tmp_path, adapter, layer, norm=8.0):
    """The adapter with random unit vectors at blocks 1 and 3 (L* = 2) and its config steering
    at ``layer``, saved as a new chosen_adapter/."""
    import shutil

    from asa_lib.method.bundle import BlockVectors, load_bundle

    b = load_bundle(adapter["folder"])
    g = np.random.default_rng(4)

    def unit():
        v = g.standard_normal(b.hidden_size)
        return (v / np.linalg.norm(v)).astype(np.float32)

    b.blocks = {k: BlockVectors({n: unit() for n in b.vectors}, {}, norm * (k + 1)) for k in (1, 3)}
    config = {**b.extra["config"], "layer": layer}
    config["alpha_eff"] = config["alpha"] * norm * (layer + 1)  # relative: that block's unit
    run = tmp_path / f"run{layer}"
    run.mkdir()
    shutil.copy(adapter["run"] / "params.yaml", run / "params.yaml")
    return save_bundle(b, run / "chosen_adapter", extra={"config": config}), b


@pytest.mark.parametrize("layer", [3, 1])  # after L* (one pass) and before it (a pre-pass)
def test_a_config_at_another_block_is_applied_there(adapter, tiny_lm, tiny_params, tmp_path, layer):
    """Issue 32: a chosen config with its own steering block: the gate reads L*, the delta
    (that block's vector, alpha in that block's unit) is added at that block, by
    ``ASA.generate`` (against the plain per-prompt loop with its own hook) and by
    ``ASA.steering`` (against the same ``generate`` call with a plain hook at that block)."""
    from test_exactness import oracle

    folder, b = _with_blocks(tmp_path, adapter, layer)
    asa = ASA.load(folder)
    assert asa.config["layer"] == layer and asa.config["gate_layer"] == b.layer == 2
    assert asa.alpha_eff == pytest.approx(asa.alpha * 8.0 * (layer + 1))
    f, pp = adapter["f"], tiny_params.prompt
    two = compute_gates(asa.bundle, f.h_eval, asa.tau)  # the gate at L*
    assert np.any(two.gate != 0)

    def delta(i):  # plain: gate * alpha_eff * normalize(beta * v_global + (1 - beta) * v_d)
        vs = b.blocks[layer].vectors
        v_d = vs.get(two.routed[i], vs["global"])
        v = asa.beta * vs["global"] + (1 - asa.beta) * v_d if two.routed[i] in vs else v_d
        return (two.gate[i] * asa.alpha_eff * v / np.linalg.norm(v)).astype(np.float32)

    gens = asa.generate(tiny_lm, None, f.eval_texts, max_new_tokens=5)
    want = [
        oracle(
            tiny_lm.model,
            tiny_lm.tokenizer,
            p,
            delta(i),
            layer,
            5,
            pp.tool_call_start,
            pp.tool_call_end,
        )
        for i, p in enumerate(f.eval_prompts)
    ]
    assert [g.output for g in gens] == want
    assert [g.decision.gate for g in gens] == two.gate.tolist()

    model, tok = tiny_lm.model, tiny_lm.tokenizer
    enc = tok(f.eval_prompts[:6], return_tensors="pt", padding=True, add_special_tokens=False)
    kw = {"max_new_tokens": 3, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with asa.steering(tiny_lm) as session:
        with torch.no_grad():
            got = model.generate(**enc, **kw)
    assert [d.gate for d in session.last] == two.gate[:6].tolist()
    d = torch.from_numpy(np.stack([delta(i) for i in range(6)]))
    fired = []

    def hook(_m, _i, out):  # the reference: a plain hook at the block, on the first pass
        if fired:
            return out
        fired.append(1)
        h = (out[0] if isinstance(out, tuple) else out).clone()
        h[:, -1] += d
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            ref = model.generate(**enc, **kw)
    finally:
        handle.remove()
    assert torch.equal(got, ref)


def test_an_old_bundle_steers_at_l_star_and_a_missing_block_is_refused(adapter, tmp_path):
    """A bundle without blocks (written before them) loads and steers at L*; a config naming a
    block the bundle has no vectors for is one error naming the block."""
    asa = ASA.load(adapter["folder"])
    assert asa.bundle.blocks == {} and asa.config["layer"] == asa.bundle.layer
    assert "blocks" not in json.loads((adapter["folder"] / "adapter.json").read_text())
    with pytest.raises(AdapterError, match="no steering vectors at block 3"):
        ASA.load(adapter["folder"], layer=3)
    folder, b = _with_blocks(tmp_path, adapter, 3)
    back = ASA.load(folder)
    for k in (1, 3):
        assert back.bundle.blocks[k].cal_mean_norm == b.blocks[k].cal_mean_norm
        for n, v in b.blocks[k].vectors.items():
            np.testing.assert_array_equal(back.bundle.blocks[k].vectors[n], v)
    assert ASA.load(folder, layer=1).config["layer"] == 1
