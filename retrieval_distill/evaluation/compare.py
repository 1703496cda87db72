"""Compare runs against a baseline with paired significance tests and multiple-comparison
correction; write Markdown, JSON and a PNG bar chart with 95% confidence intervals.

Per-query values come from :func:`retrieval_distill.evaluation.metrics.evaluate` (ranx,
trec_eval semantics: missing queries score 0). Each non-baseline run is compared with the
baseline on the same judged queries by

* the two-sided **paired t-test** (``scipy.stats.ttest_rel``), and
* the two-sided **Fisher randomisation (permutation) test** on the mean difference
  (``scipy.stats.permutation_test`` with ``permutation_type="samples"``, i.e. random sign
  flips of the per-query differences; exact when 2^n <= ``n_permutations``), as
  recommended for IR by Smucker, Allan & Carterette, "A comparison of statistical
  significance tests for information retrieval evaluation", CIKM 2007.

p-values are then corrected per (metric, test) over the family of comparisons with the
baseline, by **Holm** (step-down; Holm 1979) or **Bonferroni**.

Why not ``ranx.compare``: it has no multiple-comparison correction, its randomisation
test can return p = 0 (it does not count the observed assignment) and is seeded per numba
thread, and it needs identical query sets. The tests themselves are scipy's; only the
Holm/Bonferroni adjustment (a few lines, no statsmodels in this environment) is written
here.

Command line: ``rd eval compare RUN... --qrels F --baseline NAME --out-md/--out-json/--out-png``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from retrieval_distill.evaluation.metrics import DEFAULT_METRICS, EvalResult, evaluate, metric_label
from retrieval_distill.utils import atomic_path, write_json_atomic, write_text_atomic

TESTS = ("t-test", "fisher")
CORRECTIONS = ("holm", "bonferroni", "none")
MARKS = {"t-test": "†", "fisher": "‡"}


def adjust_pvalues(p: Sequence[float], method: str = "holm") -> list[float]:
    """Family-wise error correction of p-values.

    Args:
        p: raw p-values of one family (one metric, one test, all runs vs the baseline).
        method: ``holm`` (Holm 1979, step-down), ``bonferroni`` (p * m), or ``none``.

    Returns:
        adjusted p-values in the input order, capped at 1 (Holm's are made monotone, as in
        statsmodels' ``multipletests``).

    Raises:
        ValueError: unknown method.
    """
    m = len(p)
    if method == "none":
        return [float(x) for x in p]
    if method == "bonferroni":
        return [min(1.0, float(x) * m) for x in p]
    if method != "holm":
        raise ValueError(f"unknown correction {method!r}; use one of {CORRECTIONS}")
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p[i])))
        adj[i] = running
    return adj


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over queries: ``(mean, low, high)``."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2 or float(x.std(ddof=1)) == 0.0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired_tests(
    base: Sequence[float], other: Sequence[float], n_permutations: int = 10000, seed: int = 42
) -> dict[str, float]:
    """Two-sided paired t-test and Fisher randomisation test p-values of ``other`` vs ``base``.

    Args:
        base, other: per-query values, same queries in the same order (float arrays (n,)).

    Returns:
        ``{"t-test": p, "fisher": p}``. When every difference is 0, both p are 1.
    """
    from scipy import stats

    a = np.asarray(base, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    d = b - a
    if not np.any(d):
        return {"t-test": 1.0, "fisher": 1.0}
    if np.all(d == d[0]):  # constant non-zero difference: t undefined (sd 0), decisive
        p_t = 0.0
    else:
        p_t = float(stats.ttest_rel(b, a, alternative="two-sided").pvalue)
    res = stats.permutation_test(
        (b, a),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=n_permutations,
        alternative="two-sided",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    return {"t-test": p_t, "fisher": float(res.pvalue)}


@dataclass
class CompareResult:
    """Runs compared with a baseline.

    Attributes:
        baseline: name of the baseline run.
        metrics: metric names.
        results: run name -> :class:`EvalResult` (per-query values inside).
        tests: test names used (``t-test``, ``fisher``).
        correction: ``holm`` / ``bonferroni`` / ``none``.
        alpha: significance level applied to the adjusted p-values.
        rows: one dict per (run, metric) vs the baseline: ``run, metric, mean, baseline,
            delta, delta_ci (list of 2), p (test -> raw), p_adj (test -> adjusted),
            significant (test -> bool)``.
        ci: run -> metric -> (mean, low, high), 95% Student-t interval over queries.
    """

    baseline: str
    metrics: list[str]
    results: dict[str, EvalResult]
    tests: list[str]
    correction: str
    alpha: float
    rows: list[dict] = field(default_factory=list)
    ci: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)

    def marks(self) -> dict[str, dict[str, str]]:
        """run -> metric -> significance marks (``†`` t-test, ``‡`` Fisher) with the
        direction (``▲`` better, ``▼`` worse than the baseline) when significant."""
        out: dict[str, dict[str, str]] = {}
        for r in self.rows:
            sig = [MARKS[t] for t in self.tests if r["significant"][t]]
            if sig:
                out.setdefault(r["run"], {})[r["metric"]] = ("▲" if r["delta"] > 0 else "▼") + "".join(sig)
        return out

    def to_markdown(self, digits: int = 4) -> str:
        """Means table with marks, then a per-comparison table of Δ, CI and p-values."""
        from retrieval_distill.evaluation.metrics import format_table

        legend = ", ".join(f"{MARKS[t]} {t}" for t in self.tests)
        out = [format_table(self.results, self.metrics, digits=digits, marks=self.marks())]
        out.append(
            f"Marks: significant difference from **{self.baseline}** at α = {self.alpha} after "
            f"{self.correction} correction over the {len(self.results) - 1} comparison(s) per metric "
            f"({legend}; ▲ better, ▼ worse).\n"
        )
        if self.rows:
            head = "| run | metric | mean | Δ vs " + self.baseline + " | 95% CI of Δ |"
            for t in self.tests:
                head += f" p {t} | p {t} ({self.correction}) |"
            out.append(head)
            out.append("|---|---|---:|---:|---:|" + "---:|---:|" * len(self.tests))
            for r in self.rows:
                line = (
                    f"| {r['run']} | {metric_label(r['metric'])} | {r['mean']:.{digits}f} | {r['delta']:+.{digits}f} | "
                    f"[{r['delta_ci'][0]:+.{digits}f}, {r['delta_ci'][1]:+.{digits}f}] |"
                )
                for t in self.tests:
                    line += f" {_fmt_p(r['p'][t])} | {_fmt_p(r['p_adj'][t])} |"
                out.append(line)
        return "\n".join(out) + "\n"

    def to_dict(self) -> dict:
        """JSON-ready: baseline, settings, per-run means/CIs/counts, and the comparison rows."""
        return {
            "baseline": self.baseline,
            "metrics": self.metrics,
            "tests": self.tests,
            "correction": self.correction,
            "alpha": self.alpha,
            "runs": {
                name: {
                    "overall": r.overall,
                    "ci95": {m: list(self.ci[name][m]) for m in self.metrics},
                    "n_judged": r.n_judged,
                    "n_missing": r.n_missing,
                    "n_unjudged": r.n_unjudged,
                }
                for name, r in self.results.items()
            },
            "comparisons": self.rows,
        }

    def plot(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Grouped bar chart (one group per metric, one bar per run) with 95% CI error bars,
        written atomically as PNG (matplotlib, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(self.results)
        n = len(names)
        width = 0.8 / n
        fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(self.metrics) * max(1, n / 2)), 4.0), dpi=120)
        marks = self.marks()
        for i, name in enumerate(names):
            xs = np.arange(len(self.metrics)) + (i - (n - 1) / 2) * width
            means = [self.ci[name][m][0] for m in self.metrics]
            lo = [self.ci[name][m][0] - self.ci[name][m][1] for m in self.metrics]
            hi = [self.ci[name][m][2] - self.ci[name][m][0] for m in self.metrics]
            ax.bar(xs, means, width, yerr=[lo, hi], capsize=3, label=name)
            for x, m, top in zip(xs, self.metrics, np.array(means) + np.array(hi)):
                if marks.get(name, {}).get(m):
                    ax.text(x, top + 0.01, marks[name][m], ha="center", va="bottom", fontsize=8)
        ax.set_xticks(np.arange(len(self.metrics)))
        ax.set_xticklabels([metric_label(m) for m in self.metrics])
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("mean over judged queries (95% CI)")
        ax.set_title(title or f"vs {self.baseline} ({self.correction}-corrected, α={self.alpha})", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        path = Path(path)
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return path


def _fmt_p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def compare(
    qrels: Mapping[str, Mapping[str, int]],
    runs: Mapping[str, Mapping[str, Mapping[str, float]]],
    baseline: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    tests: Sequence[str] = TESTS,
    correction: str = "holm",
    alpha: float = 0.05,
    rel_threshold: int = 1,
    n_permutations: int = 10000,
    seed: int = 42,
    out_md: str | os.PathLike | None = None,
    out_json: str | os.PathLike | None = None,
    out_png: str | os.PathLike | None = None,
) -> CompareResult:
    """Evaluate ``runs`` and test each against ``baseline`` (see module docstring).

    Args:
        qrels: qid -> {docid: grade}.
        runs: name -> run (qid -> {docid: score}); ``baseline`` must be one of the names.
        baseline: the run every other run is compared with.
        metrics: ranx metric names.
        tests: any of ``t-test`` and ``fisher``.
        correction: ``holm`` (default), ``bonferroni`` or ``none``; applied per (metric,
            test) over the comparisons with the baseline.
        alpha: significance level for the marks (on adjusted p-values).
        rel_threshold: grade threshold of the binary metrics (2 for TREC DL).
        n_permutations: resamples of the randomisation test.
        seed: seed of the randomisation test.
        out_md, out_json, out_png: files to write (atomically) if given.

    Returns:
        :class:`CompareResult`.

    Raises:
        ValueError: unknown baseline, test or correction, or fewer than 2 runs.
    """
    if baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of the runs: {', '.join(runs)}")
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    bad = [t for t in tests if t not in TESTS]
    if bad:
        raise ValueError(f"unknown test(s) {bad}; use {TESTS}")
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; use one of {CORRECTIONS}")
    metrics, tests = list(metrics), list(tests)
    results = {name: evaluate(qrels, run, metrics, rel_threshold=rel_threshold) for name, run in runs.items()}
    qids = list(results[baseline].per_query[metrics[0]])
    ci = {name: {m: mean_ci([r.per_query[m][q] for q in qids]) for m in metrics} for name, r in results.items()}

    rows: list[dict] = []
    base = results[baseline]
    for name, r in results.items():
        if name == baseline:
            continue
        for m in metrics:
            a = [base.per_query[m][q] for q in qids]
            b = [r.per_query[m][q] for q in qids]
            d_mean, d_lo, d_hi = mean_ci(np.subtract(b, a))
            rows.append(
                {
                    "run": name,
                    "metric": m,
                    "mean": r.overall[m],
                    "baseline": base.overall[m],
                    "delta": d_mean,
                    "delta_ci": [d_lo, d_hi],
                    "p": {t: v for t, v in paired_tests(a, b, n_permutations, seed).items() if t in tests},
                }
            )
    for m in metrics:
        fam = [row for row in rows if row["metric"] == m]
        for t in tests:
            adj = adjust_pvalues([row["p"][t] for row in fam], correction)
            for row, p in zip(fam, adj):
                row.setdefault("p_adj", {})[t] = p
                row.setdefault("significant", {})[t] = bool(p < alpha)
    res = CompareResult(baseline, metrics, results, tests, correction, alpha, rows, ci)
    if out_md:
        write_text_atomic(out_md, res.to_markdown())
    if out_json:
        write_json_atomic(out_json, res.to_dict())
    if out_png:
        res.plot(out_png)
    return res


def load_runs(paths: Sequence[str | os.PathLike]) -> dict[str, dict[str, dict[str, float]]]:
    """Read run files; a run's name is ``NAME=path`` if given so, else the file name up to
    the first dot (``runs/bm25.test.trec`` -> ``bm25``).

    Raises:
        ValueError: two runs with the same name.
    """
    from retrieval_distill.evaluation.runs import read_run

    runs: dict[str, dict[str, dict[str, float]]] = {}
    for spec in paths:
        spec = str(spec)
        name, _, p = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        name = name or Path(p).name.split(".")[0]
        if name in runs:
            raise ValueError(f"two runs named {name!r}; name them explicitly as NAME=PATH")
        runs[name] = read_run(p)
    return runs


def dumps(res: CompareResult) -> str:
    """``res.to_dict()`` as indented JSON."""
    return json.dumps(res.to_dict(), indent=2)
