"""One plain sentence from a run's measured numbers (``results.json``): what the run found.

The index and the analysis page (07) open with it. VALID decides (as the choice
does); TEST is reported with the paired bootstrap interval of the difference from
the unsteered baseline on the same prompts.
"""

from __future__ import annotations

from typing import Any

BASELINE = "baseline"

# The kinds of a decision flip (asa_lib.run.analysis.flips).
FLIP_KINDS = ("gained a call (+1 gate)", "lost a call (-1 gate)", "changed against its gate")

# Did the gate's decision happen? Among the rows where the baseline decided the other way than
# the gate pushes (a -1 gate on a row the baseline calls on, a +1 gate on one it abstains on):
# how many the gate aimed at, and how many of them kept the baseline's decision. Then the rows
# the pull moved against its own sign: a -1 gate that newly calls, a +1 gate that newly
# abstains (their sum is FLIP_KINDS[2], "changed against its gate").
AIMED = ("-1 gate on a baseline call", "+1 gate on a baseline abstention")
HELD = ("-1 gate, still calls", "+1 gate, still abstains")
BACKFIRED = ("-1 gate, newly calls", "+1 gate, newly abstains")


def signed(x: float) -> str:
    """``+0.012`` / ``−0.017`` (a true minus sign); ``0.000`` for a value that rounds to zero
    (as :mod:`asa_lib.report.tables` prints it)."""
    s = f"{x:+.3f}"
    return "0.000" if s in ("+0.000", "-0.000") else s.replace("-", "−")


def _ci_word(lo: float, hi: float) -> str:
    if lo == hi == 0:
        return "no change on any resample"
    if lo > 0:
        return "CI above 0"
    if hi < 0:
        return "CI below 0"
    return "CI includes 0"


def _fpr_word(lo: float, hi: float) -> str:
    word = _ci_word(lo, hi)
    return f" {word}" if word.startswith("CI") else f": {word}"


def verdict(results: dict[str, Any]) -> str:
    """The run's verdict in one or two short sentences (module docstring).

    Examples: "No config beats the baseline on VALID (F1 0.400). Chosen t75_a25: TEST ΔF1
    −0.017 [−0.047, +0.012] (CI includes 0); FPR 0.50 → 0.48, recall 0.94 → 0.90."
    """
    configs = results.get("configs", {})
    base = configs.get(BASELINE)
    steered = [n for n in configs if n != BASELINE]
    if base is None:
        return "The unsteered baseline has no results: nothing to compare."
    bv, bt = base["splits"]["valid"], base["splits"]["test"]
    if not steered:
        return (
            f"Only the unsteered baseline ran (VALID F1 {bv['f1']:.3f}, TEST F1 {bt['f1']:.3f}): "
            "no steered config to compare."
        )
    dv = results.get("vs_baseline", {}).get("valid", {})
    # beyond noise: the paired 95% interval of VALID ΔF1 lies above 0 (not a point estimate)
    better = [n for n in steered if n in dv and dv[n]["d_f1_lo"] > 0]
    if not better:
        first = (
            f"No config beats the baseline on VALID with a paired 95% interval above 0 "
            f"(baseline F1 {bv['f1']:.3f}; {len(steered)} configs)."
        )
    else:
        best = max(better, key=lambda n: dv[n]["d_f1"])
        first = (
            f"{len(better)} of {len(steered)} configs beat the baseline on VALID with a paired "
            f"95% interval above 0; the best, {best}, raises F1 from {bv['f1']:.3f} to "
            f"{configs[best]['splits']['valid']['f1']:.3f}."
        )
    chosen = results.get("chosen", {}).get("name")
    if chosen is None or chosen == BASELINE or chosen not in configs:
        return first + f" The baseline is kept: TEST F1 {bt['f1']:.3f}."
    first += tie_note(results)
    ct = configs[chosen]["splits"]["test"]
    d = results.get("vs_baseline", {}).get("test", {}).get(chosen)
    if d is None:
        return first + f" Chosen {chosen}: TEST F1 {ct['f1']:.3f}."
    return first + (
        f" Chosen {chosen}: TEST ΔF1 {signed(d['d_f1'])} [{signed(d['d_f1_lo'])}, "
        f"{signed(d['d_f1_hi'])}] ({_ci_word(d['d_f1_lo'], d['d_f1_hi'])}); "
        f"FPR {bt['fpr']:.2f} → {ct['fpr']:.2f} (ΔFPR{_fpr_word(d['d_fpr_lo'], d['d_fpr_hi'])}), "
        f"recall {bt['recall']:.2f} → {ct['recall']:.2f}."
    )


def tie_note(results: dict[str, Any]) -> str:
    """ " Chosen X of k configs tied at VALID F1 f, by ..." where the choice broke a tie (the
    rule: best VALID F1, then lower VALID FPR, then the earlier config); "" where none."""
    configs = results.get("configs", {})
    chosen = results.get("chosen", {}).get("name")
    if chosen not in configs or chosen == BASELINE:
        return ""
    cv = configs[chosen]["splits"]["valid"]
    tied = [
        n
        for n, r in configs.items()
        if n != BASELINE and abs(r["splits"]["valid"]["f1"] - cv["f1"]) < 1e-12
    ]
    if len(tied) < 2:
        return ""
    same = [n for n in tied if abs(configs[n]["splits"]["valid"]["fpr"] - cv["fpr"]) < 1e-12]
    how = (
        "the lower VALID FPR"
        if len(same) == 1
        else f"its place in the params (the first of {len(same)} with equal VALID F1 and FPR)"
    )
    return (
        f" {chosen} was chosen among {len(tied)} configs tied at VALID F1 {cv['f1']:.3f}, by {how}."
    )


# When the advice speaks: at least this share of the rows the gate aimed at kept the baseline's
# decision ("try another block"), and backfired rows at least this share of the flips that went
# the gate's way (or any backfired row where none did: "lower alpha").
HELD_SHARE = 0.5
BACKFIRE_SHARE = 0.25


def decision_advice(row: dict, config: str = "") -> list[str]:
    """Plain sentences from one flips row (:func:`asa_lib.run.analysis.flip_counts`): did the
    gate's decision happen? "try another block" where at least :data:`HELD_SHARE` of the rows
    the gate aimed at kept the baseline's decision; "lower alpha" where the rows moved against
    their gate are at least :data:`BACKFIRE_SHARE` of those moved its way (any, where none
    was)."""
    who = f"{config} ({row['split'].upper()})" if config else row["split"].upper()
    out = []
    aimed = row.get(AIMED[0], 0) + row.get(AIMED[1], 0)
    held = row.get(HELD[0], 0) + row.get(HELD[1], 0)
    if aimed and held / aimed >= HELD_SHARE:
        out.append(
            f"{who}: the gate was right but the pull did not flip: {held} of the {aimed} rows "
            f"where the gate asked for the other decision kept the baseline's "
            f"({row.get(HELD[0], 0)} with gate -1 still call, {row.get(HELD[1], 0)} with gate +1 "
            "still abstain): try another block (a config's layer, steering.blocks)."
        )
    back = row.get(BACKFIRED[0], 0) + row.get(BACKFIRED[1], 0)
    toward = row.get(FLIP_KINDS[0], 0) + row.get(FLIP_KINDS[1], 0)
    if back and back >= BACKFIRE_SHARE * toward:
        out.append(
            f"{who}: the pull backfired: {back} rows moved against their gate "
            f"({row.get(BACKFIRED[0], 0)} with gate -1 newly call, {row.get(BACKFIRED[1], 0)} "
            f"with gate +1 newly abstain; {toward} moved its way): lower alpha."
        )
    return out
