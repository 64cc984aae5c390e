import numpy as np
import pytest
import torch

from asa_lib.engine.extract import extract_states, extract_to_file, load_states, states_shape
from asa_lib.model.hooks import capture_last_token
from asa_lib.model.load import decoder_blocks
from asa_lib.prompts import render_prompts
from conftest import PROMPTS


def _rel(a, b):
    return float((np.abs(a - b).max(axis=-1) / np.abs(b).max(axis=-1)).max())


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_batched_prefix_cached_equals_one_at_a_time(which, tiny_lm, tiny_params, request):
    lm = tiny_lm if which == "tiny" else request.getfixturevalue("smol_lm")
    pp = tiny_params.prompt if which == "tiny" else request.getfixturevalue("demo_params").prompt
    prompts = render_prompts(lm.tokenizer, pp, PROMPTS)
    lens = {len(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lens) == len(prompts)  # different lengths in one batch
    batched = extract_states(
        lm, prompts, batch_size=4
    )  # shared prefix cache + right-padded suffixes
    single = extract_states(
        lm, prompts, batch_size=1, share_prefix=False
    )  # whole prompts, one at a time
    assert batched.shape == (4, lm.num_layers, lm.hidden_size)
    assert _rel(batched, single) < 1e-4


def test_one_row_prefix_batches_leave_the_shared_prefix_intact(tiny_lm, tiny_params):
    # Every batch is one row and reuses the same prefix cache; LFM2's conv states are
    # updated in place, so a one-row batch that wrote into the prefix would shift every
    # later row. The reference reads hidden_states of whole prompts, one at a time.
    prompts = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, PROMPTS)
    got = extract_states(tiny_lm, prompts, batch_size=1, share_prefix=True)
    for i, p in enumerate(prompts):
        enc = tiny_lm.tokenizer(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            hs = tiny_lm.model(**enc, output_hidden_states=True).hidden_states
        want = np.stack([hs[layer + 1][0, -1].numpy() for layer in range(tiny_lm.num_layers - 1)])
        np.testing.assert_allclose(got[i, :-1], want, rtol=1e-4, atol=1e-4)


def test_states_are_block_outputs_before_the_final_norm(tiny_lm, tiny_params):
    prompt = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, ["Calculate 3*3"])[0]
    states = extract_states(tiny_lm, [prompt], batch_size=1)[0]
    enc = tiny_lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        hs = tiny_lm.model(**enc, output_hidden_states=True).hidden_states
    for layer in range(tiny_lm.num_layers - 1):  # hidden_states[l + 1] is block l's output ...
        np.testing.assert_allclose(
            states[layer], hs[layer + 1][0, -1].numpy(), rtol=1e-5, atol=1e-5
        )
    # ... except the last entry, which is taken after the final norm
    assert not np.allclose(states[-1], hs[-1][0, -1].numpy(), atol=1e-3)


def test_streamed_file_matches_memory_and_reads_one_layer(tiny_lm, tiny_params, tmp_path):
    prompts = render_prompts(tiny_lm.tokenizer, tiny_params.prompt, PROMPTS * 3)
    mem = extract_states(tiny_lm, prompts, batch_size=5)
    run = tmp_path
    extract_to_file(
        tiny_lm,
        prompts,
        run / "states" / "cal.safetensors",
        batch_size=5,
        meta={"ids": list(range(12))},
    )
    assert states_shape(run, "cal") == (12, 4, 64)
    np.testing.assert_array_equal(load_states(run, "cal"), mem)
    np.testing.assert_array_equal(load_states(run, "cal", 2), mem[:, 2])
    assert not list((run / "states").glob(".*tmp"))  # no temporary file left behind
    with pytest.raises(IndexError):
        load_states(run, "cal", 4)


def test_hooks_are_removed_even_on_error(tiny_lm):
    blocks = decoder_blocks(tiny_lm.model)
    before = [len(b._forward_hooks) for b in blocks]
    with pytest.raises(RuntimeError), capture_last_token(blocks):
        assert [len(b._forward_hooks) for b in blocks] == [n + 1 for n in before]
        raise RuntimeError("boom")
    assert [len(b._forward_hooks) for b in blocks] == before


def test_capture_accepts_tuple_outputs():
    class Block(torch.nn.Module):
        def forward(self, x):
            return (x * 2, "extra")

    blocks = torch.nn.ModuleList([Block()])
    x = torch.arange(6.0).reshape(1, 3, 2)
    with capture_last_token(blocks) as cap:
        blocks[0](x)
    assert torch.equal(cap[0], torch.tensor([[8.0, 10.0]]))


def test_padding_helpers_lay_out_prefix_padding_and_suffixes():
    from asa_lib.engine.prefix import left_padded, right_padded

    ids, mask, pos, last = right_padded([[5, 6, 7], [8]], 0, 2, "cpu")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert pos.tolist() == [[2, 3, 4], [2, 3, 4]]
    assert last.tolist() == [2, 0]
    ids, mask = left_padded([[5, 6, 7], [8]], 0, [1, 2], "cpu")
    assert ids.tolist() == [[1, 2, 5, 6, 7], [1, 2, 0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]]
    ids, mask = left_padded([[5, 6], [8]], 0, [], "cpu")
    assert ids.tolist() == [[5, 6], [0, 8]] and mask.tolist() == [[1, 1], [0, 1]]


def test_batches_bound_rows_and_padding():
    from asa_lib.engine.extract import MAX_PADDING, _batches

    lengths = [56, 14, 30, 29, 55, 40, 41, 15, 16, 22, 28, 50, 49, 48, 47, 46, 45, 44, 43, 42]
    batches = _batches(lengths, 8)
    rows = [i for b in batches for i in b]
    assert sorted(rows) == list(range(len(lengths)))  # every row once
    assert [lengths[i] for i in rows] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 8 and min(lengths[i] for i in b) >= (1 - MAX_PADDING) * longest
    assert max(len(b) for b in batches) == 8  # full batches where lengths allow
    assert [len(b) for b in _batches([10] * 5, 2)] == [2, 2, 1]


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_reading_blocks_up_to_l_skips_the_blocks_above_and_reads_the_same_states(
    which, tiny_lm, tiny_params, request, monkeypatch
):
    """``upto=l`` (what ``asa evaluate`` reads: L*): states of blocks 0 .. l only, the blocks
    above never run, and the states are a plain forward's (``hidden_states``, one prompt at
    a time)."""
    from asa_lib.engine.extract import iter_last_token_states

    lm = tiny_lm if which == "tiny" else request.getfixturevalue("smol_lm")
    pp = tiny_params.prompt if which == "tiny" else request.getfixturevalue("demo_params").prompt
    prompts = render_prompts(lm.tokenizer, pp, PROMPTS)
    upto = 1
    blocks = decoder_blocks(lm.model)
    ran: list[int] = []
    # a block's sub-modules run only when its own forward does (not the pass-through)
    handles = [
        c.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
        for i, b in enumerate(blocks)
        for c in b.children()
    ]
    try:  # whole prompts: a shared prefix would run (once, every block: it is cached for all)
        for _ in iter_last_token_states(lm, prompts, 4, share_prefix=False, upto=upto):
            pass
    finally:
        for h in handles:
            h.remove()
    assert set(ran) == set(range(upto + 1))
    got = np.zeros((len(prompts), upto + 1, lm.hidden_size), np.float32)
    for idx, states in iter_last_token_states(lm, prompts, 4, upto=upto):
        got[idx] = states
    for i, p in enumerate(prompts):
        enc = lm.tokenizer(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states
        want = np.stack([hs[layer + 1][0, -1].numpy() for layer in range(upto + 1)])
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="upto=99"):
        next(iter_last_token_states(lm, prompts, 4, upto=99))
