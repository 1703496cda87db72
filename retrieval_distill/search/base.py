"""The Searcher seam of DESIGN.md: ``search(query, k) -> list[Hit]`` and ``batch_search``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Hit:
    """One retrieved document: its docid, score (higher is better) and 1-based rank."""

    docid: str
    score: float
    rank: int
