"""Checks that a speed option (bf16 autocast, ONNX Runtime int8) scores like fp32.

Every fast path of a teacher is checked against the same teacher in fp32 on a sample of
real pairs before it is used; when the scores drift too far it raises
:class:`SpeedCheckError` instead of running silently wrong. The result is kept on the
teacher (``teacher.speed_check``) and recorded in the score-file manifest.

Two numbers are checked on the sample:

* the largest absolute difference relative to the spread of the fp32 scores
  (``max|fast - ref| / std(ref)``), which must be ``<= rel_tol``;
* the Spearman rank correlation between fast and fp32 scores, which must be
  ``>= min_spearman`` (a reranker only needs the order to be right, and margin-MSE
  needs the margins, which the first number bounds).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


MIN_CHECK_PAIRS = 3
"""Fewest pairs a check can rank (Spearman needs three); a teacher asked for fewer before its
first check scores them in fp32 (:func:`stays_exact`)."""


def stays_exact(fast: bool, speed_check: dict | None, n_pairs: int) -> bool:
    """Whether a teacher must score this call in fp32: it has a speed option (``fast``), no
    check has run yet (``speed_check is None``) and the call has fewer than
    :data:`MIN_CHECK_PAIRS` pairs to check the option on. A speed path is never used unchecked.
    Shared by the cross-encoder and the ColBERT teacher."""
    return fast and speed_check is None and n_pairs < MIN_CHECK_PAIRS


class SpeedCheckError(RuntimeError):
    """A speed option's scores differ too much from fp32 on the check sample."""


def check_against_fp32(
    fast: Callable[[list[str], list[str]], np.ndarray],
    ref: Callable[[list[str], list[str]], np.ndarray],
    queries: list[str],
    passages: list[str],
    *,
    option: str,
    rel_tol: float = 0.1,
    min_spearman: float = 0.98,
) -> dict:
    """Score a sample both ways and compare.

    Args:
        fast, ref: scoring functions ``(queries, passages) -> float (n,)``.
        queries, passages: the sample (n pairs, n >= :data:`MIN_CHECK_PAIRS`).
        option: the option's name, for messages.
        rel_tol: allowed ``max|fast - ref| / std(ref)``.
        min_spearman: required Spearman correlation.

    Returns:
        ``{"option", "n", "max_abs_diff", "rel_max_diff", "spearman", "ok": True}``.

    Raises:
        SpeedCheckError: outside the tolerances.
    """
    from scipy.stats import spearmanr

    a = np.asarray(fast(queries, passages), dtype=np.float64)
    b = np.asarray(ref(queries, passages), dtype=np.float64)
    diff = float(np.max(np.abs(a - b))) if len(a) else 0.0
    sd = float(np.std(b)) or 1.0
    rho = float(spearmanr(a, b).statistic) if len(a) >= 3 and np.std(a) > 0 and np.std(b) > 0 else 1.0
    res = {"option": option, "n": len(a), "max_abs_diff": diff, "rel_max_diff": diff / sd, "spearman": rho, "rel_tol": rel_tol, "min_spearman": min_spearman}
    if diff / sd > rel_tol or rho < min_spearman:
        raise SpeedCheckError(
            f"{option}: scores differ from fp32 on {len(a)} sample pairs (max |diff| {diff:.4g} = {diff / sd:.3f} std, "
            f"Spearman {rho:.4f}; allowed {rel_tol} std and >= {min_spearman}); refusing to run with {option}"
        )
    res["ok"] = True
    return res
