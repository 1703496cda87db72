"""Retrieval metrics with trec_eval semantics, computed by ranx.

``evaluate(qrels, run)`` returns nDCG@10, MRR@10, Recall@100 (or any ranx metric) overall
and per query, and says which queries it averaged over:

* **judged** queries: in the qrels with at least one document of grade > 0. The mean is
  taken over exactly these.
* **missing** queries: judged but absent from the run. They count as 0 on every metric,
  like ``trec_eval -c`` (the convention of every published TREC/BEIR figure). Never
  silently dropped: their number is reported.
* **unjudged** queries: in the run but not in the qrels. Excluded (nothing to score them
  against) and reported.
* queries with **no relevant** document (only grade-0 judgments): excluded by default
  (they cannot score above 0 on any metric, so averaging them in measures the qrels,
  not the system) and reported; ``count_no_relevant=True`` averages them in as 0.

Semantics, checked against trec_eval on hand-worked cases in ``tests/test_eval_metrics.py``:

* **Ties** are broken as trec_eval does (score descending, then docid descending). ranx
  itself orders ties arbitrarily (an unstable argsort of the hashed docids), so the run
  handed to ranx carries each document's trec_eval rank as its score
  (:func:`rank_scores`); every metric here depends on ranks only.
* **Graded qrels**: nDCG uses the grades themselves as gains with a log2(rank+1)
  discount (Järvelin & Kekäläinen 2002; trec_eval ``ndcg_cut``, ranx ``ndcg``), with
  every grade >= 1 contributing gain whatever ``rel_threshold`` is: the way TREC DL nDCG@10
  is published (Anserini/Pyserini run ``trec_eval -c -m ndcg_cut.10`` without ``-l``).
* **Binary metrics** (MRR, Recall, MAP, Precision, ...) call a document relevant when
  its grade >= ``rel_threshold``, like ``trec_eval -l``. TREC DL uses 2
  (``trec_eval -c -l 2 -m map``), BEIR and classic collections 1. This is ranx's
  ``rel_lvl``, given as the ``-l<N>`` metric suffix (``map-l2``), which drops grades
  below N from the qrels of that metric.

Command line: ``rd eval score --qrels F --run F [--rel-threshold 2] [--per-query]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100")
#: metrics that use graded gains; every other ranx metric is binary and gets ``rel_threshold``.
GRADED = ("ndcg", "dcg", "ndcg_burges", "dcg_burges")

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


@dataclass
class EvalResult:
    """Metrics of one run against one qrels.

    Attributes:
        overall: metric -> mean over the judged queries (missing queries count 0).
        per_query: metric -> {qid: value} for every judged query (0.0 for missing ones).
        n_judged: queries in the qrels with a relevant document (the averaging set).
        n_missing: judged queries absent from the run (scored 0, as ``trec_eval -c``).
        n_unjudged: run queries not in the qrels (excluded).
        n_no_relevant: qrels queries whose judgments are all grade 0 (excluded unless
            ``count_no_relevant``; then they are part of ``n_judged``).
        missing_qids, unjudged_qids, no_relevant_qids: the ids behind the counts.
        rel_threshold: grade threshold of the binary metrics.
        metrics: metric names, in the order asked for.
    """

    overall: dict[str, float]
    per_query: dict[str, dict[str, float]]
    n_judged: int
    n_missing: int
    n_unjudged: int
    n_no_relevant: int = 0
    missing_qids: list[str] = field(default_factory=list)
    unjudged_qids: list[str] = field(default_factory=list)
    no_relevant_qids: list[str] = field(default_factory=list)
    rel_threshold: int = 1
    metrics: list[str] = field(default_factory=list)

    def counts_note(self) -> str:
        """One line stating what was averaged: ``43 judged queries (2 missing from the run,
        scored 0); 5 run queries not in the qrels excluded``."""
        s = f"{self.n_judged} judged queries ({self.n_missing} missing from the run, scored 0)"
        s += f"; {self.n_unjudged} run queries not in the qrels excluded"
        if self.n_no_relevant:
            s += f"; {self.n_no_relevant} qrels queries without a relevant document excluded"
        s += f"; binary metrics count grade >= {self.rel_threshold} as relevant"
        return s

    def to_dict(self, per_query: bool = True) -> dict:
        """A JSON-ready dict (``per_query`` omitted when False)."""
        d = {
            "metrics": self.metrics,
            "overall": self.overall,
            "n_judged": self.n_judged,
            "n_missing": self.n_missing,
            "n_unjudged": self.n_unjudged,
            "n_no_relevant": self.n_no_relevant,
            "missing_qids": self.missing_qids,
            "unjudged_qids": self.unjudged_qids,
            "no_relevant_qids": self.no_relevant_qids,
            "rel_threshold": self.rel_threshold,
            "note": self.counts_note(),
        }
        if per_query:
            d["per_query"] = self.per_query
        return d

    def to_json(self, per_query: bool = True) -> str:
        return json.dumps(self.to_dict(per_query), indent=2)


#: ranx's metric names (``ranx.metrics.metric_switch``)
METRIC_NAMES = (
    "hits", "hit_rate", "precision", "recall", "f1", "r-precision", "mrr", "map",
    "dcg", "dcg_burges", "ndcg", "ndcg_burges", "bpref", "rbp",
)
_METRIC_HELP = "ranx names: ndcg@10, mrr@10, recall@100, map, precision@10, ...; cut-offs are positive integers"


def parse_metric(metric: str) -> str:
    """Check one metric name and return it normalised (lower case, stripped).

    Grammar: ``NAME[@K][-lN]``: NAME a ranx metric (:data:`METRIC_NAMES`), K a cut-off
    (an integer >= 1; ``rbp`` takes its persistence digits instead, ``rbp.95``), N a
    relevance level (an integer >= 1). Checked here so that a bad name is a clear
    ``ValueError`` before ranx runs (ranx fails on ``ndcg@-5`` with a bare AssertionError and
    takes ``ndcg@0`` as "no cut-off").

    Raises:
        ValueError: an unknown name, or a cut-off or level that is not a positive integer.
    """
    m = str(metric).strip().lower()
    body, level = m, None
    if "-l" in m:
        body, _, level = m.rpartition("-l")
        if not (level.isascii() and level.isdigit()) or int(level) < 1:
            raise ValueError(f"metric {metric!r}: relevance level {level!r} after '-l' must be an integer >= 1")
    if body.startswith("rbp"):
        name, sep, cut = body[:3], body[3:4], body[4:]
        if body == "rbp" or sep not in ("@", ".") or not (cut.isascii() and cut.isdigit()):
            raise ValueError(f"metric {metric!r}: rbp needs its persistence as digits, e.g. rbp.95")
        return m
    name, sep, cut = body.partition("@")
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r} ({_METRIC_HELP})")
    if sep:
        if not (cut.isascii() and cut.isdigit()) or int(cut) < 1:
            raise ValueError(f"metric {metric!r}: cut-off {cut!r} must be an integer >= 1 ({_METRIC_HELP})")
        m = f"{name}@{int(cut)}" + (f"-l{int(level)}" if level is not None else "")
    return m


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """Metric names from a comma- or space-separated string (or a list), each checked by
    :func:`parse_metric`; duplicates are dropped, order kept.

    Raises:
        ValueError: no metric, or a bad one (the message names it).
    """
    items = text.replace(",", " ").split() if isinstance(text, str) else [str(t) for t in text]
    if not items:
        raise ValueError("no metric given")
    return list(dict.fromkeys(parse_metric(t) for t in items))


def ranx_metric_name(metric: str, rel_threshold: int) -> str:
    """The ranx metric string for ``metric``: binary metrics get ``-l<threshold>``.

    ``ndcg@10`` stays ``ndcg@10``; ``mrr@10`` with threshold 2 becomes ``mrr@10-l2``; a
    metric that already has ``-l`` is left as given.

    Raises:
        ValueError: an unknown metric name, or a bad cut-off (see :func:`parse_metric`).
    """
    m = parse_metric(metric)
    base = re.split(r"[@.]", m.rpartition("-l")[0] if "-l" in m else m, maxsplit=1)[0]
    if "-l" in m or base in GRADED or rel_threshold == 1:
        return m
    return f"{m}-l{rel_threshold}"


def rank_scores(scores: Mapping[str, float]) -> dict[str, float]:
    """Replace scores by ``n - rank`` (trec_eval order: score desc, docid desc), so that
    any tool sorting by score alone reproduces trec_eval's tie-breaking."""
    from retrieval_distill.evaluation.runs import trec_order

    n = len(scores)
    return {d: float(n - i) for i, (d, _) in enumerate(trec_order(dict(scores)))}


class FixedWidthIds(dict):
    """docid -> a 10-digit token, assigned on first use.

    ranx stores docids as numpy fixed-width unicode arrays, and numba compiles its data
    structures once per width (about a minute each on a busy 2-core machine): every
    collection with a different longest docid paid that again. Handing ranx docids of
    one width keeps it to a single compilation (done once by :func:`warm_up`).
    """

    def __missing__(self, docid: str) -> str:
        token = f"{len(self):010d}"
        self[docid] = token
        return token


def warm_up() -> None:
    """Compile ranx's numba code for the shapes :func:`evaluate` uses (once per process;
    cached on disk under ``$NUMBA_CACHE_DIR``). Tests call it once per session."""
    evaluate({"q": {"d1": 2, "d2": 0}}, {"q": {"d1": 1.0, "d3": 0.5}}, ["ndcg@10", "mrr@10", "recall@100", "map"])


def evaluate(
    qrels: Qrels,
    run: Run,
    metrics: Sequence[str] = DEFAULT_METRICS,
    rel_threshold: int = 1,
    count_no_relevant: bool = False,
) -> EvalResult:
    """Score ``run`` against ``qrels`` with ranx, trec_eval semantics (see module doc).

    Args:
        qrels: qid -> {docid: grade (int, 0 = judged not relevant)}.
        run: qid -> {docid: score (float, higher is better)}.
        metrics: ranx metric names (``ndcg@10``, ``mrr@10``, ``recall@100``,
            ``recall@1000``, ``map``, ``precision@10``...).
        rel_threshold: minimum grade a binary metric counts as relevant (trec_eval ``-l``).
        count_no_relevant: average queries whose judgments are all grade 0 in, as 0.

    Returns:
        :class:`EvalResult`.

    Raises:
        ValueError: unknown metric, ``rel_threshold < 1``, or no judged query at all.
    """
    from ranx import Qrels as RQrels
    from ranx import Run as RRun
    from ranx import evaluate as ranx_evaluate

    if rel_threshold < 1:
        raise ValueError(f"rel_threshold must be >= 1, got {rel_threshold}")
    metrics = list(metrics)
    names = {m: ranx_metric_name(m, rel_threshold) for m in metrics}

    no_rel = [q for q, r in qrels.items() if r and not any(g > 0 for g in r.values())]
    judged = [q for q, r in qrels.items() if any(g > 0 for g in r.values())]
    if count_no_relevant:
        judged = [q for q, r in qrels.items() if r]
    if not judged:
        raise ValueError("the qrels have no query with a relevant document: nothing to evaluate")
    present = [q for q in judged if run.get(q)]
    missing = [q for q in judged if not run.get(q)]
    unjudged = [q for q in run if q not in qrels]

    per_query: dict[str, dict[str, float]] = {m: {q: 0.0 for q in judged} for m in metrics}
    # ranx needs a relevant document per query; no-relevant queries (count_no_relevant) stay 0.
    scored = [q for q in present if any(g > 0 for g in qrels[q].values())]
    if scored:
        ids = FixedWidthIds()
        rq = RQrels({q: {ids[d]: int(g) for d, g in qrels[q].items()} for q in scored})
        rr = RRun({q: {ids[d]: s for d, s in rank_scores(run[q]).items()} for q in scored})
        ranx_evaluate(rq, rr, list(dict.fromkeys(names.values())), save_results_in_run=True)
        for m in metrics:
            for q, v in rr.scores[names[m]].items():
                per_query[m][q] = float(v)
    overall = {m: sum(per_query[m].values()) / len(judged) for m in metrics}
    return EvalResult(
        overall=overall,
        per_query=per_query,
        n_judged=len(judged),
        n_missing=len(missing),
        n_unjudged=len(unjudged),
        n_no_relevant=len(no_rel),
        missing_qids=missing,
        unjudged_qids=unjudged,
        no_relevant_qids=no_rel,
        rel_threshold=rel_threshold,
        metrics=metrics,
    )


def metric_label(metric: str) -> str:
    """Display name: ``ndcg@10`` -> ``nDCG@10``, ``mrr@10`` -> ``MRR@10``, ``map`` -> ``MAP``."""
    base, _, rest = metric.partition("@")
    pretty = {"ndcg": "nDCG", "mrr": "MRR", "map": "MAP", "recall": "Recall", "precision": "P", "hit_rate": "HitRate"}
    return pretty.get(base, base) + (f"@{rest}" if rest else "")


def format_table(
    rows: Mapping[str, EvalResult], metrics: Sequence[str] | None = None, digits: int = 4, marks: Mapping | None = None
) -> str:
    """A Markdown table, one row per run: ``| run | nDCG@10 | ... | judged | missing |``.

    Args:
        rows: name -> :class:`EvalResult`.
        metrics: columns (default: the first row's metrics).
        digits: decimals shown.
        marks: optional name -> metric -> suffix (significance marks from
            :func:`retrieval_distill.evaluation.compare.compare`).

    Returns:
        the table, ending with a line that states what the means are over.
    """
    if not rows:
        raise ValueError("no rows to format")
    first = next(iter(rows.values()))
    metrics = list(metrics or first.metrics)
    head = "| run | " + " | ".join(metric_label(m) for m in metrics) + " | judged | missing | unjudged |"
    sep = "|---|" + "---:|" * len(metrics) + "---:|---:|---:|"
    lines = [head, sep]
    for name, r in rows.items():
        cells = []
        for m in metrics:
            cell = f"{r.overall[m]:.{digits}f}"
            if marks and marks.get(name, {}).get(m):
                cell += marks[name][m]
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r.n_judged} | {r.n_missing} | {r.n_unjudged} |")
    lines.append("")
    lines.append(
        f"Means over the judged queries (missing queries scored 0, as trec_eval -c); binary metrics count "
        f"grade >= {first.rel_threshold} as relevant; nDCG uses graded gains."
    )
    return "\n".join(lines) + "\n"
