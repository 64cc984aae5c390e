"""The seed's recipe over Alpaca-style rows: keyword domains and the keyword labelling rule.

A prompt goes to the first domain with one of its keywords in it
(case-insensitive substring match) and is labelled ``tool`` when the output
mentions the same domain or a result/output/answer/return (the seed's rule).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from asa_lib.data.splits import LABELS, SplitResult, check_splits, slice_buckets
from asa_lib.seed import SEED_DOMAINS

OUTPUT_TOOL_WORDS = ("result", "output", "answer", "return")


KeywordDomains = Mapping[str, Sequence[str]]


def classify(text: str, domains: KeywordDomains | None = None) -> str | None:
    """The seed's keyword rule: first domain with a keyword in ``text`` (lower-cased).

    ``domains``: ordered name -> lower-case keywords (``DataParams.keyword_domains()``);
    None: the seed's four.
    """
    t = text.lower()
    for domain, keywords in (SEED_DOMAINS if domains is None else domains).items():
        if any(k in t for k in keywords):
            return domain
    return None


def label_for(domain: str, output: str, domains: KeywordDomains | None = None) -> str:
    """The seed's label: 'tool' if the output is in the same domain or mentions a result."""
    if classify(output, domains) == domain or any(k in output.lower() for k in OUTPUT_TOOL_WORDS):
        return "tool"
    return "non_tool"


def prompt_text(row: dict[str, Any]) -> str:
    """instruction + ' ' + input, exactly as the seed builds it."""
    return row.get("instruction", "") + " " + row.get("input", "")


def check_row(row: Any) -> str | None:
    """None for a usable row, else the reason it is skipped.

    ``instruction`` and ``output`` must be strings; ``input`` may be absent (the
    seed reads it with a default of "") but, when present, must be a string.
    """
    if not isinstance(row, dict):
        return "not an object"
    for key in ("instruction", "output"):
        if key not in row:
            return f"missing '{key}'"
        if not isinstance(row[key], str):
            return f"non-string '{key}'"
    if "input" in row and not isinstance(row["input"], str):
        return "non-string 'input'"
    return None


def build_splits(
    rows: Iterable[Any],
    per_split_per_class: int = 40,
    test_multiplier: int = 2,
    seed: int = 42,
    skipped: dict[str, int] | None = None,
    domains: KeywordDomains | None = None,
) -> SplitResult:
    """Bucket, shuffle and slice exactly as the seed notebook does.

    ``domains``: ordered name -> lower-case keywords; None: the seed's four.
    """
    domains = SEED_DOMAINS if domains is None else domains
    own: dict[str, int] = {}  # ``skipped`` may still be filled while ``rows`` are read
    buckets: dict[str, dict[str, list[int]]] = {d: {"tool": [], "non_tool": []} for d in domains}
    texts: dict[int, str] = {}
    n_read = 0
    for i, row in enumerate(rows):
        n_read += 1
        if row is None:  # invalid JSON line, already counted
            continue
        reason = check_row(row)
        if reason is not None:
            own[reason] = own.get(reason, 0) + 1
            continue
        text = prompt_text(row)
        dom = classify(text, domains)
        if dom is None:
            continue
        buckets[dom][label_for(dom, row["output"], domains)].append(i)
        texts[i] = text

    skipped = dict(skipped or {})
    for reason, n in own.items():
        skipped[reason] = skipped.get(reason, 0) + n
    samples, shortfalls = slice_buckets(
        buckets,
        {i: (f"r{i}", t) for i, t in texts.items()},
        per_split_per_class,
        test_multiplier,
        seed,
    )
    result = SplitResult(
        samples=samples,
        bucket_sizes={d: {lb: len(buckets[d][lb]) for lb in LABELS} for d in buckets},
        shortfalls=shortfalls,
        skipped=skipped,
        rows_read=n_read,
        domains=list(buckets),
    )
    check_splits(result)
    return result
