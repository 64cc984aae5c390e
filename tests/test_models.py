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
