"""ASA's mechanism on real weights: the demo model (SmolLM2-135M + the project's LoRA adapter).

A unit mean-difference direction at one block, from synthetic tool and plain
requests (none of them Alpaca rows, none of them the prompts below), added at
the last prompt token on the prefill pass:
- a +1 gate at a sufficient alpha makes prompts that had no tool call call one;
- a -1 gate removes calls from prompts that had one;
- a 0 gate leaves every output byte-identical, even when it shares a batch
  with steered rows.
"""

import random

import numpy as np
import pytest

from asa_lib.demo.synthetic import synthetic_requests
from asa_lib.engine.extract import extract_states
from asa_lib.engine.generate import (
    GenerationSettings,
    generate_all,
)
from asa_lib.prompts import render_prompts
from asa_lib.tools import triggered

pytestmark = pytest.mark.slow

LAYER = 10
PROMPTS = [
    "Give me three tips for staying healthy.",
    "What is the capital of France?",
    "Describe the colour blue to someone who cannot see.",
    "Explain how a rainbow forms.",
    "Name three famous painters.",
    "Write a sentence using the word 'serendipity'.",
    "What is 15% of 80?",
    "Find the latest news about electric bicycles.",
    "Convert 100 degrees Fahrenheit to Celsius.",
    "Translate 'good night' into Spanish.",
    "Write a function that checks whether a number is prime.",
    "Who is the current president of Brazil?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Suggest a name for a bakery.",
    "How many minutes are in a week?",
    "Tell me a joke about computers.",
]


@pytest.fixture(scope="module")
def setup(demo_lm, demo_params):
    pp = demo_params.prompt
    reqs = synthetic_requests(pp, 24, 24, random.Random(1234), set())
    texts = [e.text for e in reqs]
    is_tool = np.array([e.call is not None for e in reqs])
    h = extract_states(demo_lm, render_prompts(demo_lm.tokenizer, pp, texts), batch_size=16)[
        :, LAYER
    ]
    v = h[is_tool].mean(0) - h[~is_tool].mean(0)
    v /= np.linalg.norm(v)
    mean_norm = float(np.linalg.norm(h, axis=1).mean())
    prompts = render_prompts(demo_lm.tokenizer, pp, PROMPTS)
    base, _ = generate_all(
        demo_lm,
        prompts,
        GenerationSettings(max_new_tokens=24, batch_size=16, markers=pp),
        None,
        layer=LAYER,
    )
    return pp, prompts, v.astype(np.float32), mean_norm, base


def _run(demo_lm, setup, signs: np.ndarray, alpha: float) -> list[str]:
    pp, prompts, v, mean_norm, _ = setup
    deltas = signs[:, None].astype(np.float32) * np.float32(alpha * mean_norm) * v[None, :]
    return generate_all(
        demo_lm,
        prompts,
        GenerationSettings(max_new_tokens=24, batch_size=16, markers=pp),
        deltas,
        layer=LAYER,
    )[0]


def test_gates_move_decisions_in_their_direction(demo_lm, setup):
    pp, prompts, _, _, base = setup
    had = np.array([triggered(o, pp) for o in base])
    assert 0 < had.sum() < len(had), (
        f"the baseline should call tools on some prompts only: {had.sum()}"
    )
    push = _run(demo_lm, setup, np.where(had, 0, 1), alpha=0.5)
    gained = sum(triggered(push[i], pp) for i in np.flatnonzero(~had))
    pull = _run(demo_lm, setup, np.where(had, -1, 0), alpha=0.5)
    kept = sum(triggered(pull[i], pp) for i in np.flatnonzero(had))
    print(
        f"baseline calls {had.sum()}/{len(had)}; +1 gate: {gained}/{(~had).sum()} gained a call; "
        f"-1 gate: {had.sum() - kept}/{had.sum()} lost theirs"
    )
    assert gained >= 2, "a +1 gate should make prompts without a call call a tool"
    assert kept <= had.sum() - 2, "a -1 gate should remove calls"
    for out, o in (
        (push, base),
        (pull, base),
    ):  # zero-gate rows in the same batches: byte-identical
        zero = np.flatnonzero(had) if out is push else np.flatnonzero(~had)
        assert [out[i] for i in zero] == [o[i] for i in zero]


def test_a_zero_gate_everywhere_changes_nothing(demo_lm, setup):
    assert _run(demo_lm, setup, np.zeros(len(PROMPTS)), alpha=0.5) == setup[4]
