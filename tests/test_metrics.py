import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
)

from asa_lib.metrics import binary_metrics, bootstrap_ci, evaluate_records
from asa_lib.run.records import PromptRecord
from asa_lib.tools import Score


def test_metrics_match_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        y, p = rng.integers(0, 2, n), rng.integers(0, 2, n)
        m = binary_metrics(y, p)
        tn, fp, fn, tp = confusion_matrix(y, p, labels=[0, 1]).ravel()
        assert m["precision"] == precision_score(y, p, zero_division=0)
        assert m["recall"] == recall_score(y, p, zero_division=0)
        assert abs(m["f1"] - f1_score(y, p, zero_division=0)) < 1e-12
        assert m["accuracy"] == accuracy_score(y, p)
        assert m["fpr"] == (fp / (fp + tn) if fp + tn else 0.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.8, y, 1 - y)
    a, b = bootstrap_ci(y, p, seed=3), bootstrap_ci(y, p, seed=3)
    assert a == b and bootstrap_ci(y, p, seed=4) != a
    m = binary_metrics(y, p)
    for k in ("f1", "recall", "fpr"):
        assert a[k][0] <= m[k] <= a[k][1] and a[k][1] - a[k][0] < 0.3


def test_evaluate_records_per_domain_and_validity():
    def rec(label, domain, *score):
        s = Score(*score)
        return PromptRecord.scored(
            s,
            id="r",
            split="valid",
            domain=domain,
            label=label,
            tools=None,
            routed=domain,
            has_probe=True,
            p_tool=0.5,
            gate=0,
            output="<call>" if s.triggered else "",
        ).to_dict()

    recs = [
        rec(1, "math", True, True, True),
        rec(1, "math", True, True, False),
        rec(0, "code", True, False, False),
        rec(0, "code", False, False, False),
    ]
    m = evaluate_records(recs)
    assert m["triggers"] == 3 and m["format_valid_rate"] == 2 / 3 and m["valid_call_rate"] == 1 / 3
    assert m["per_domain"]["math"]["recall"] == 1.0 and m["per_domain"]["code"]["fpr"] == 0.5


def test_paired_bootstrap_diff_against_a_plain_loop():
    from asa_lib.metrics import paired_bootstrap_diff

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    base = np.where(rng.random(80) < 0.6, y, 1 - y)
    new = np.where(rng.random(80) < 0.3, y, base)  # steering fixes some decisions
    got = paired_bootstrap_diff(y, base, new, metrics=("f1", "fpr"), n_boot=300, seed=7)
    # reference: the same resampled prompts, scored with scikit-learn one resample at a time
    idx = np.random.default_rng(7).integers(0, 80, size=(300, 80))
    d_f1, d_fpr = [], []
    for row in idx:
        t, a, b = y[row], base[row], new[row]
        d_f1.append(f1_score(t, b, zero_division=0) - f1_score(t, a, zero_division=0))
        neg = max(int((t == 0).sum()), 1)
        d_fpr.append((((t == 0) & (b == 1)).sum() - ((t == 0) & (a == 1)).sum()) / neg)
    assert abs(got["f1"]["lo"] - np.percentile(d_f1, 2.5)) < 1e-12
    assert abs(got["f1"]["hi"] - np.percentile(d_f1, 97.5)) < 1e-12
    assert abs(got["fpr"]["lo"] - np.percentile(d_fpr, 2.5)) < 1e-12
    assert abs(got["f1"]["diff"] - (f1_score(y, new) - f1_score(y, base))) < 1e-12
    assert got["f1"]["lo"] > 0  # a real improvement is seen beyond noise
    same = paired_bootstrap_diff(y, base, base)
    assert same["f1"] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}


def test_the_calls_split_by_why_adds_up_to_the_calls():
    """#34 item 1: each triggered output is complete valid, complete invalid or cut."""
    from asa_lib.metrics import validity_shares, validity_split
    from asa_lib.params import PromptParams
    from asa_lib.tools import CallMarkers, score_output

    pp = PromptParams()
    tools = [
        {
            "name": "calc",
            "parameters": {"type": "object", "properties": {"x": {}}, "required": ["x"]},
        }
    ]
    s, e = pp.tool_call_start, pp.tool_call_end
    outputs = {
        "valid": f'{s}{{"name": "calc", "arguments": {{"x": 1}}}}{e}',
        "unlisted": f'{s}{{"name": "other", "arguments": {{"x": 1}}}}{e}',
        "no argument": f'{s}{{"name": "calc", "arguments": {{}}}}{e}',
        "does not parse": f"{s}calc(((({e}",
        "cut valid-looking": f'{s}{{"name": "calc", "arguments": {{"x": 1}}}}',
        "cut": f'{s}{{"name": "calc", "argu',
        "no call": "The answer is 4.",
    }
    recs = []
    for out in outputs.values():
        sc = score_output(out, CallMarkers.of(pp), tools)
        recs.append({"triggered": sc.triggered, "valid": sc.valid, "complete": sc.complete})
    split = validity_split(recs)
    assert split == {"complete valid": 1, "complete invalid": 3, "cut": 2}
    assert sum(split.values()) == sum(r["triggered"] for r in recs) == 6
    shares = validity_shares({"validity_split": split, "triggers": 6})
    assert shares == {
        "complete_valid_share": 1 / 6,
        "complete_invalid_share": 0.5,
        "cut_share": 2 / 6,
    }
    assert all(v != v for v in validity_shares({"validity_split": split, "triggers": 0}).values())


def test_the_calls_on_tool_rows_count_only_label_1_rows_that_call():
    """#32: "on BFCL label-1 rows, the share of the calls that are valid": the calls on rows
    that need none (label 0) and the rows that do not call are left out."""
    from asa_lib.metrics import evaluate_records, tool_row_calls

    def rec(label, triggered, valid):
        return {"label": label, "triggered": triggered, "valid": valid, "domain": "all"}

    recs = [
        rec(1, True, True),
        rec(1, True, False),
        rec(1, True, True),
        rec(1, False, False),  # abstains: no call to judge
        rec(0, True, True),  # a valid call where none is needed: not a tool row
        rec(0, True, False),
        rec(None, True, True),  # no label (asa generate): not a tool row
    ]
    assert tool_row_calls(recs) == {"calls": 3, "valid": 2}
    assert tool_row_calls([rec(0, True, True)]) == {"calls": 0, "valid": 0}
    m = evaluate_records([{**r, "format_valid": r["valid"]} for r in recs[:6]])
    assert m["tool_row_calls"] == {"calls": 3, "valid": 2}
    assert m["valid_call_rate"] == 3 / 5  # all calls, label 0 included


def test_why_a_call_could_not_run_is_named_and_agrees_with_its_score():
    """Each started call gets one reason (benchmarks/call_validity.py counts them); a cut call is
    "cut" whatever it holds, as validity_split counts it, and "valid" is score_output's valid."""
    from asa_lib.params import PromptParams
    from asa_lib.tools import CALL_PROBLEMS, CallMarkers, call_problem, score_output

    pp = PromptParams()
    m = CallMarkers.of(pp)
    tools = [
        {
            "name": "calc",
            "parameters": {"type": "object", "properties": {"x": {}}, "required": ["x"]},
        }
    ]
    s, e = pp.tool_call_start, pp.tool_call_end
    expected = {
        f'{s}{{"name": "calc", "arguments": {{"x": 1}}}}{e}': "valid",
        f'{s}{{"name": "other", "arguments": {{"x": 1}}}}{e}': "names an unlisted tool",
        f'{s}{{"name": "calc", "arguments": {{"x": ""}}}}{e}': "lacks a required argument",
        f'{s}{{"name": "calc", "arguments": {{"properties": {{"x": 1}}}}}}{e}': (
            "lacks a required argument"  # the schema copied into the arguments
        ),
        f"{s}calc(((({e}": "does not parse",
        f'{s}{{"name": "calc", "arguments": {{"x": 1}}}}': "cut",
        f'{s}{{"name": "calc", "argu': "cut",
        "The answer is 4.": None,
    }
    for out, why in expected.items():
        assert call_problem(out, m, tools) == why, out
        sc = score_output(out, m, tools)
        assert (why is not None) == sc.triggered
        if why is not None and why != "cut":
            assert (why == "valid") == sc.valid, out
            assert (why != "does not parse") == sc.format_valid, out
    assert set(expected.values()) - {None} == set(CALL_PROBLEMS)
