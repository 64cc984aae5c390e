"""What the reports compute from sweep results: flips, paired differences, grids, reference rows."""

import numpy as np
import pandas as pd

from asa_lib.params import params_from_dict
from asa_lib.run import analysis
from asa_lib.run.records import PromptRecord


def rec(i, label, triggered, gate=0, output=None, split="valid"):
    return PromptRecord(
        id=f"r{i}",
        split=split,
        domain="math",
        label=label,
        tools=None,
        routed="math",
        has_probe=True,
        p_tool=0.5,
        gate=gate,
        output=output if output is not None else ("<call>" if triggered else "text"),
        triggered=triggered,
        format_valid=False,
        valid=False,
    ).to_dict()


def result(name, records, tau=0.6, alpha=0.5, beta=0.0):
    return {
        "name": name,
        "tau": tau,
        "alpha": alpha,
        "beta": beta,
        "records": records,
        "splits": {s: {} for s in sorted({r["split"] for r in records})},
    }


def test_flips_are_classified_against_the_gate():
    base = result(
        "baseline",
        [
            rec(0, 1, False),
            rec(1, 0, True),
            rec(2, 1, True),
            rec(3, 0, False),
            rec(4, 1, False),
            rec(5, 0, False),
        ],
        tau=None,
        alpha=0.0,
    )
    steered = result(
        "x",
        [
            rec(0, 1, True, gate=1),  # gained under +1
            rec(1, 0, False, gate=-1),  # lost under -1
            rec(2, 1, False, gate=1),  # lost although pushed: against its gate
            rec(3, 0, False, gate=1, output="other text"),  # output changed, decision kept
            rec(4, 1, False, gate=0),  # unchanged
            rec(5, 0, True, gate=-1),
        ],
    )  # gained although pulled back
    f = analysis.flips(base, steered)
    assert f["id"].tolist() == ["r0", "r1", "r2", "r5"]
    assert f["kind"].tolist() == [
        analysis.FLIP_KINDS[0],
        analysis.FLIP_KINDS[1],
        analysis.FLIP_KINDS[2],
        analysis.FLIP_KINDS[2],
    ]
    assert f.loc[0, "baseline output"] == "text" and f.loc[0, "steered output"] == "<call>"
    c = analysis.flip_counts(base, steered).iloc[0]
    assert (c["prompts"], c["steered"], c["output changed"], c["decision flips"]) == (6, 5, 5, 4)
    assert c[analysis.FLIP_KINDS[0]] == 1 and c[analysis.FLIP_KINDS[2]] == 2


def test_paired_differences_are_zero_for_an_identical_config():
    recs = [rec(i, i % 2, bool(i % 3), split=s) for s in ("valid", "test") for i in range(30)]
    res = {"baseline": result("baseline", recs, tau=None, alpha=0.0), "same": result("same", recs)}
    d = analysis.paired_differences(res, "test").iloc[0]
    assert d["config"] == "same" and d["d_f1"] == d["d_f1_lo"] == d["d_f1_hi"] == 0.0
    assert not d["d_f1 beyond noise"]


def test_grid_only_for_a_real_tau_alpha_grid():
    df = pd.DataFrame(
        {
            "config": ["baseline", "a", "b", "c", "d"],
            "tau": [None, 0.6, 0.6, 0.7, 0.7],
            "alpha": [0.0, 0.2, 0.4, 0.2, 0.4],
            "f1": [0.1, 0.2, 0.3, 0.4, 0.5],
        }
    )
    g = analysis.grid(df, "f1")
    assert g.index.tolist() == [0.7, 0.6] and g.columns.tolist() == [0.2, 0.4]
    np.testing.assert_array_equal(g.to_numpy(), [[0.4, 0.5], [0.2, 0.3]])
    assert analysis.grid(df.iloc[:3], "f1") is None  # one tau only
    dup = pd.concat([df, df.iloc[[1]].assign(config="e")])
    assert analysis.grid(dup, "f1") is None  # two configs in one cell (e.g. different beta)


def test_each_family_of_configs_gets_its_own_grid():
    """Configs that repeat a tau x alpha grid with another vector or at another block: one grid
    each (the plain grid sees two configs in a cell and gives none)."""
    cells = [(0.6, 0.2), (0.6, 0.4), (0.7, 0.2), (0.7, 0.4)]
    rows = [{"config": "baseline", "tau": None, "alpha": 0.0, "vector": "mixture", "layer": 11}]
    for vector, layer, base in (
        ("mixture", 11, 0.1),
        ("behaviour", 11, 0.5),
        ("behaviour", 19, 0.7),
    ):
        for j, (t, a) in enumerate(cells):
            rows.append(
                {
                    "config": f"{vector}{layer}_{j}",
                    "tau": t,
                    "alpha": a,
                    "vector": vector,
                    "layer": layer,
                    "f1": base + j / 100,
                    "fpr": 1 - base,
                }
            )
    df = pd.DataFrame(rows)
    assert analysis.grid(df, "f1") is None
    fams = analysis.family_grids(df)
    assert [label for label, _ in fams] == [
        "vector behaviour, block 11",
        "vector behaviour, block 19",
        "vector mixture, block 11",
    ]
    np.testing.assert_allclose(fams[1][1]["f1"].to_numpy(), [[0.72, 0.73], [0.70, 0.71]])
    one = analysis.family_grids(df[df["vector"] != "behaviour"])
    assert [label for label, _ in one] == [""]  # one family: no label


def test_reference_row_only_where_it_applies(tmp_path):
    d = {
        "name": "x",
        "model": {"kind": "tiny", "id": "tiny-lfm2"},
        "data": {"source": "hub/id"},
        "reference": {
            "name": "Qwen ref",
            "f1": 0.6,
            "applies_to": ["LiquidAI/LFM2.5-1.2B-Instruct"],
        },
    }
    assert analysis.reference_row(params_from_dict(d, tmp_path)) is None
    d["reference"]["applies_to"].append("tiny-lfm2")
    row = analysis.reference_row(params_from_dict(d, tmp_path))
    assert row["name"] == "Qwen ref" and row["f1"] == 0.6 and "applies_to" not in row


def test_ablation_table_labels_each_config_and_the_paper_model():
    recs = [rec(i, i % 2, bool(i % 3), split=s) for s in ("valid", "test") for i in range(10)]
    cfgs = {
        "baseline": {"gate": "none"},
        "asa": {"gate": "probe", "vector": "mixture", "beta": 0.5},
        "g": {"gate": "probe", "beta": 1.0},
        "d": {"gate": "probe", "beta": 0.0},
        "n": {"gate": "always", "beta": 0.5},
        "o": {"gate": "oracle", "beta": 0.5},
        "r": {"gate": "probe", "vector": "random", "beta": 0.5},
    }
    from asa_lib.metrics import evaluate_records

    res = {}
    for name, c in cfgs.items():
        r = result(name, recs)
        r["config"] = c
        r["splits"] = {
            s: {"metrics": evaluate_records([x for x in recs if x["split"] == s])}
            for s in ("valid", "test")
        }
        res[name] = r
    t = analysis.ablation_table(res).set_index("config")
    assert (
        t.loc["n", "ablation"] == "no gate (always +1)"
        and t.loc["n", "paper F1 (Qwen2.5-1.5B)"] == 0.391
    )
    assert t.loc["o", "ablation"] == "oracle router" and t.loc["r", "ablation"] == "random vector"
    assert (
        t.loc["g", "ablation"] == "global vector only"
        and t.loc["d", "ablation"] == "domain vectors only"
    )
    assert t.loc["asa", "paper FPR (Qwen2.5-1.5B)"] == 0.052
    assert pd.isna(t.loc["baseline", "paper F1 (Qwen2.5-1.5B)"])


def test_ablations_are_reported_but_never_chosen():
    def res_with(name, f1, cfg):
        return {
            "name": name,
            "config": cfg,
            "splits": {"valid": {"metrics": {"f1": f1, "fpr": 0.1}}},
        }

    res = {
        "baseline": res_with("baseline", 0.1, {"gate": "none"}),
        "oracle": res_with("oracle", 0.9, {"gate": "oracle", "vector": "mixture"}),
        "random": res_with("random", 0.8, {"gate": "probe", "vector": "random"}),
        "asa": res_with("asa", 0.5, {"gate": "probe", "vector": "mixture"}),
    }
    assert analysis.choose_config(res) == "asa"
    assert analysis.choose_config({k: res[k] for k in ("baseline", "oracle")}) == "baseline"


def test_one_pass_agreement_picks_tool_and_non_tool_test_prompts_and_compares_with_the_sweep(
    tmp_path,
):
    from types import SimpleNamespace

    from asa_lib.data.splits import Sample, SplitResult, write_splits

    test = [Sample(f"t{i}", "test", "math", int(i % 3 == 0), i, f"text {i}") for i in range(12)]
    other = {s: [Sample(f"{s}0", s, "math", 1, 0, "x")] for s in ("cal", "train", "valid")}
    write_splits(tmp_path, SplitResult({**other, "test": test}, {"math": {}}, []))
    records = [rec(i, int(i % 3 == 0), False, output=f"out {i}", split="test") for i in range(12)]
    for r in records:
        r["id"] = f"t{r['id'][1:]}"
    steered = [dict(r, output=f"steered {r['id']}") for r in records]
    res = {"baseline": result("baseline", records), "cfg": result("cfg", steered)}
    asked = []

    def generate(texts):
        asked.append(texts)
        # one output differs from the sweep's
        return [
            SimpleNamespace(
                output="different" if t == "text 3" else f"steered t{t.split()[1]}",
                decision=SimpleNamespace(routed="math", p_tool=0.91234, gate=1),
            )
            for t in texts
        ]

    assert analysis.chosen_adapter(tmp_path, "baseline") is None
    assert analysis.chosen_adapter(tmp_path, "cfg") is None  # no adapter.json
    (tmp_path / "chosen_adapter").mkdir()
    (tmp_path / "chosen_adapter" / "adapter.json").write_text("{}")
    assert analysis.chosen_adapter(tmp_path, "cfg") == tmp_path / "chosen_adapter"
    check = analysis.one_pass_agreement(tmp_path, res, "cfg", generate)
    # the first three tool rows (0, 3, 6), then the first three non-tool rows (1, 2, 4)
    assert asked == [["text 0", "text 3", "text 6", "text 1", "text 2", "text 4"]]
    t = check.table
    assert t["id"].tolist() == ["t0", "t3", "t6", "t1", "t2", "t4"]
    assert t["label"].tolist() == ["tool"] * 3 + ["non-tool"] * 3
    assert t["baseline output"].tolist() == [f"out {i}" for i in (0, 3, 6, 1, 2, 4)]
    assert t["= sweep"].tolist() == [True, False, True, True, True, True]
    assert t["p(tool)"].tolist() == [0.912] * 6 and t["gate"].tolist() == [1] * 6
    assert (check.same, check.n) == (5, 6)
    assert check.summary == "one-pass outputs equal to the sweep's: 5/6"


def test_one_pass_agreement_asks_rows_with_their_own_tools(tmp_path):
    """A row that brought its own tools is asked with them (else the prompt is another one)."""
    from types import SimpleNamespace

    from asa_lib.data.splits import Sample, SplitResult, tool_set_id, write_splits

    own = [{"name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    tid = tool_set_id(own)
    test = [
        Sample("t0", "test", "all", 1, 0, "text 0", tools=tid),
        Sample("t1", "test", "all", 0, 1, "text 1"),
    ]
    other = {s: [Sample(f"{s}0", s, "all", 1, 0, "x")] for s in ("cal", "train", "valid")}
    write_splits(
        tmp_path, SplitResult({**other, "test": test}, {"all": {}}, [], tool_sets={tid: own})
    )
    records = [rec(0, 1, False, split="test"), rec(1, 0, False, split="test")]
    for r in records:
        r["id"] = f"t{r['id'][1:]}"
    res = {"baseline": result("baseline", records), "cfg": result("cfg", records)}
    asked = []

    def generate(requests):
        asked.extend(requests)
        d = SimpleNamespace(routed="all", p_tool=0.5, gate=0)
        return [SimpleNamespace(output="text", decision=d) for _ in requests]

    analysis.one_pass_agreement(tmp_path, res, "cfg", generate, n=1)
    assert asked == [{"text": "text 0", "tools": own}, "text 1"]


def test_did_the_gate_s_decision_happen_counts_and_advice():
    """Issue 32 item 4: among rows where the baseline decided the other way than the gate
    pushes, how many kept the baseline's decision; and the rows moved against their gate.
    Expected counts from a hand count of the rows below (no helper of the code under test)."""
    base_calls = [True, True, True, False, False, False, True, False]
    # (gate, steered call): the comment says what happened against the baseline
    steered_rows = [
        (-1, True),  # -1 on a call, still calls
        (-1, True),  # -1 on a call, still calls
        (-1, False),  # -1 on a call, stopped: lost a call
        (-1, True),  # -1 on an abstention, newly calls: backfired
        (1, False),  # +1 on an abstention, still abstains
        (1, True),  # +1 on an abstention, gained a call
        (1, False),  # +1 on a call, newly abstains: backfired
        (0, False),  # no gate: the baseline's output
    ]
    base = result("baseline", [rec(i, 0, b) for i, b in enumerate(base_calls)], tau=None, alpha=0.0)
    steered = result("x", [rec(i, 0, t, gate=g) for i, (g, t) in enumerate(steered_rows)])
    c = analysis.flip_counts(base, steered).iloc[0]
    assert c["-1 gate on a baseline call"] == 3 and c["-1 gate, still calls"] == 2
    assert c["+1 gate on a baseline abstention"] == 2 and c["+1 gate, still abstains"] == 1
    assert c["-1 gate, newly calls"] == 1 and c["+1 gate, newly abstains"] == 1
    # the existing kind "changed against its gate" is their sum
    assert c[analysis.FLIP_KINDS[2]] == 2
    advice = analysis.decision_advice(c.to_dict(), "x")
    assert any("the pull did not flip" in a and "try another block" in a for a in advice)
    assert any("backfired" in a and "lower alpha" in a for a in advice)
    # a pull that did what the gate asked: no advice
    ok = result(
        "y",
        [
            rec(i, 0, not b if i < 3 else b, gate=-1 if i < 3 else 0)
            for i, b in enumerate(base_calls)
        ],
    )
    row = analysis.flip_counts(base, ok).iloc[0].to_dict()
    assert row["-1 gate, still calls"] == 0 and analysis.decision_advice(row) == []
