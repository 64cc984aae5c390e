"""Draft-verified decoding: check a steered row's baseline output in one forward pass.

See :mod:`asa_lib.engine.generate` for how drafts are found and used; the verify pass is
:meth:`asa_lib.engine.promptmajor.PromptBatch.verify`.
"""

from __future__ import annotations

import torch

from asa_lib.model.load import LoadedModel


def accept(draft: list[int], greedy: list[int]) -> list[int]:
    """The accepted tokens: the draft's prefix that agrees with ``greedy``, then greedy's next token."""
    k = 0
    while k < len(draft) and greedy[k] == draft[k]:
        k += 1
    return list(draft[:k]) + [greedy[k]]


# generation_config fields that make generate's greedy choice differ from the plain argmax
# a verify pass takes, with the values that leave it alone.
_ARGMAX_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
}


def greedy_is_argmax(model) -> bool:
    """True when the model's generation config adds nothing to greedy argmax (drafts can be verified)."""
    cfg = getattr(model, "generation_config", None)
    return cfg is None or all(getattr(cfg, k, None) in ok for k, ok in _ARGMAX_NEUTRAL.items())


def draft_for(setting: str, lm: LoadedModel) -> bool:
    """Resolve ``generation.draft``: "on" verifies drafts; "auto" only for float32 models.

    In float32 the verified outputs equal the plain path's in every test (and the
    oracle's). In bfloat16 on an H200 (benchmarks/RESULTS_gpu.md, random weights)
    a verify pass and stepwise decoding broke near-ties differently: 10 of 6,400
    decisions changed (99.8% identical) and the sweep was no faster (0.99x), so
    "auto" leaves drafts off for half-precision models.
    """
    if setting == "auto":
        return next(lm.model.parameters()).dtype == torch.float32
    return setting == "on"


def draft_min_acceptance_for(setting: str, lm: LoadedModel) -> float:
    """The share of draft tokens accepted below which a call stops verifying drafts.

    "on": 0 (always verify). "auto": a verify pass costs about as many token
    forwards as the draft is long, so where few draft tokens are accepted it
    only adds work; once the batches verified so far accepted less than 25%
    (CPU, where every forwarded token costs compute) or 5% (GPU, where a
    verify pass costs about one prefill) of their draft tokens, the rest of
    the call decodes plainly. These thresholds are estimates, not measured.
    """
    if setting != "auto":
        return 0.0
    return 0.05 if lm.device.type == "cuda" else 0.25
