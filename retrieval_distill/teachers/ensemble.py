"""Ensemble teacher: per-query normalised, weighted fusion of member teachers.

Each member scores the candidate list of a query on its own scale (BM25 sums, cosines,
MaxSim sums, logits). Those scales are not comparable, and they change from query to
query (a BM25 score of 30 is high for one query and low for another), so each member's
scores are normalised **per query, over that query's candidate list**, and then summed
with weights (score fusion as in Fox & Shaw 1994, "Combination of Multiple Searches";
normalisation choices after Montague & Aslam 2001, "Relevance Score Normalization for
Metasearch"):

* ``zscore`` (default): ``(s - mean) / std`` over the query's candidates. Robust to
  differently shaped score distributions: one outlier (a BM25 exact-title match) moves the
  mean and std a little, and members with narrow ranges (cosines within 0.05) are
  stretched to the same spread as wide ones. Zero std gives all zeros.
* ``minmax``: ``(s - min) / (max - min)``. Bounded to [0, 1] but set entirely by the two
  extreme candidates, so one outlier squeezes every other candidate together; it also
  depends on the candidate depth. Zero range gives all zeros.

Because normalisation needs a query's whole list, :meth:`EnsembleTeacher.score_ids`
groups the pairs by qid, and callers must pass complete candidate lists per query (the
scoring job shards by query, so a query's list is always scored together).
:meth:`EnsembleTeacher.score` (texts only) groups by query text.

Weights are chosen on a dev split by nDCG@10 (:meth:`EnsembleTeacher.fit_weights`, with
ranx) and recorded in the spec (hence in the fingerprint and the score-file manifest).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from retrieval_distill.teachers.base import TeacherSpec, build_teacher, check_options, register_teacher, score_pairs
from retrieval_distill.utils import fingerprint_obj

log = logging.getLogger(__name__)

NORMALIZATIONS = ("zscore", "minmax", "none")


def normalize_per_query(scores: np.ndarray, groups: list[np.ndarray], method: str) -> np.ndarray:
    """Normalise ``scores`` within each group of indices.

    Args:
        scores: float (n,).
        groups: index arrays, one per query, covering the pairs of that query.
        method: ``zscore``, ``minmax`` or ``none`` (the raw scores: for one member whose own
            scale a loss should see, e.g. a MaxSim teacher's margins, or members on one scale).

    Returns:
        float64 (n,).
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")
    s = np.asarray(scores, dtype=np.float64)
    if method == "none":
        return s.copy()
    out = np.zeros_like(s)
    for idx in groups:
        v = s[idx]
        if method == "zscore":
            sd = v.std()
            out[idx] = (v - v.mean()) / sd if sd > 0 else 0.0
        else:
            rng = v.max() - v.min()
            out[idx] = (v - v.min()) / rng if rng > 0 else 0.0
    return out


def _groups(keys: list[str]) -> list[np.ndarray]:
    pos: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        pos.setdefault(k, []).append(i)
    return [np.asarray(v, dtype=np.int64) for v in pos.values()]


@register_teacher("ensemble")
class EnsembleTeacher:
    """Weighted sum of per-query normalised member scores (scale ``fused``; one member with
    ``normalization: none`` keeps that member's scale).

    Args:
        spec: ``TeacherSpec(kind="ensemble", members=[...], weights=[...], normalization="zscore")``;
            empty ``weights`` means equal weights.

    Raises:
        ValueError: no members, weight count mismatch, negative weights, unknown normalisation,
            any ``options`` (they belong to the members).
    """

    scale = "fused"
    OPTIONS = frozenset()  # an ensemble's settings are its fields; options belong to members

    def __init__(self, spec: TeacherSpec):
        check_options(spec, self.OPTIONS)
        if not spec.members:
            raise ValueError("an ensemble teacher needs at least one member spec")
        if spec.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {spec.normalization!r}")
        if spec.weights and len(spec.weights) != len(spec.members):
            raise ValueError(f"{len(spec.weights)} weights for {len(spec.members)} members")
        if any(w < 0 for w in spec.weights):
            raise ValueError(f"ensemble weights must be >= 0, got {spec.weights}")
        self.spec = spec
        self.members = [build_teacher(m) for m in spec.members]
        if not spec.weights:
            spec.weights = [1.0 / len(self.members)] * len(self.members)
        if spec.normalization == "none" and len(self.members) == 1:
            self.scale = self.members[0].scale  # one member, raw scores: its own scale
        self.max_length = max((getattr(m, "max_length", 0) or 0) for m in self.members) or None
        self.tokenizer = next((m.tokenizer for m in self.members if getattr(m, "tokenizer", None) is not None), None)

    @property
    def weights(self) -> list[float]:
        return list(self.spec.weights)

    @property
    def speed_check(self) -> dict | None:
        """The fp32 checks of members that run a speed option (bf16, int8), by member name
        (the scoring job records them in the score manifest); None when no member has one."""
        checks = {m.spec.name or f"member-{i}": m.speed_check for i, m in enumerate(self.members) if getattr(m, "speed_check", None)}
        return checks or None

    def check_queries(self, qids, queries: dict[str, str] | None = None) -> None:
        """Run every member's ``check_queries`` (a ``cross_fit`` bi-encoder refuses a query all
        its students trained on) before the scoring job writes anything.

        Args:
            qids: the qids the job will score. queries: optional qid -> text of the collection.

        Raises:
            ValueError: from a member.
        """
        qids = list(qids)
        for m in self.members:
            if callable(getattr(m, "check_queries", None)):
                m.check_queries(qids, queries)

    def check_speed(self, queries: list[str], passages: list[str]) -> dict | None:
        """Run the fp32 check of every member that has one (``check_speed``: the ColBERT
        teacher's bf16) on these pairs, before the scoring job's document pass, so no member's
        speed option encodes a document unchecked.

        Returns:
            :attr:`speed_check`.

        Raises:
            SpeedCheckError: a member's option drifts from fp32.
        """
        for m in self.members:
            if callable(getattr(m, "check_speed", None)):
                m.check_speed(queries, passages)
        return self.speed_check

    @property
    def fingerprint(self) -> str:
        """Members' fingerprints, weights and normalisation."""
        return fingerprint_obj(
            {
                "kind": "ensemble",
                "members": [m.fingerprint for m in self.members],
                "weights": [round(w, 8) for w in self.spec.weights],
                "normalization": self.spec.normalization,
            }
        )

    # -- scoring ------------------------------------------------------------------------
    def member_scores(self, qids, queries, docids, passages) -> np.ndarray:
        """Raw scores of every member: float32 (n_members, n)."""
        return np.stack([score_pairs(m, qids, queries, docids, passages) for m in self.members])

    def fuse(self, raw: np.ndarray, keys: list[str], weights: list[float] | None = None) -> np.ndarray:
        """Fuse member scores ``raw`` (n_members, n) grouped by ``keys`` (qids): float32 (n,)."""
        w = self.spec.weights if weights is None else weights
        groups = _groups(keys)
        out = np.zeros(raw.shape[1], dtype=np.float64)
        for wi, r in zip(w, raw):
            if wi:
                out += wi * normalize_per_query(r, groups, self.spec.normalization)
        return out.astype(np.float32)

    def score_ids(self, qids: list[str], queries: list[str], docids: list[str], passages: list[str]) -> np.ndarray:
        """Fused scores; pairs are grouped by qid and each query's list is normalised as a whole.

        Returns:
            float32 (n,).
        """
        if not qids:
            return np.zeros(0, dtype=np.float32)
        return self.fuse(self.member_scores(qids, queries, docids, passages), list(qids))

    def score(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """Texts only: pairs are grouped by query text. Members that need ids (BM25) raise."""
        if not queries:
            return np.zeros(0, dtype=np.float32)
        raw = np.stack([np.asarray(m.score(queries, passages), dtype=np.float32) for m in self.members])
        return self.fuse(raw, list(queries))

    # -- weights on dev -----------------------------------------------------------------
    def fit_weights(
        self,
        qrels: dict[str, dict[str, int]],
        candidates: dict[str, list[str]],
        queries: dict[str, str],
        doc_text,
        grid: list[float] | None = None,
        metric: str = "ndcg@10",
        progress: bool = True,
        member_cache: dict | None = None,
    ) -> dict:
        """Choose member weights on a dev split by ``metric`` (ranx) and store them in the spec.

        Args:
            qrels: dev qrels, qid -> {docid: grade}.
            candidates: qid -> candidate docids (the lists the teacher will rerank).
            queries: qid -> query text.
            doc_text: docid -> passage text (a dict or a callable).
            grid: weight values tried for each member (default 0, 0.25, 0.5, 0.75, 1);
                combinations are normalised to sum 1 and deduplicated; all-zero is skipped.
            metric: a ranx metric name.
            progress: a progress bar (pairs scored, rate, ETA) over the members' dev scores,
                which take minutes for a MaxSim or cross-encoder member.
            member_cache: a dict shared between calls: a member's raw dev scores are kept
                there under (its fingerprint, the pair list) and reused by a later call, so a
                member listed in several candidate teachers is scored once (the pipeline's
                teacher list).

        Returns:
            ``{"weights": best, "metric": metric, "best": value, "equal": value of equal
            weights, "tried": [(weights, value), ...], "queries": n}``; ties keep the
            combination found first (grid order), with equal weights tried first.
        """
        from ranx import Qrels, Run, evaluate

        grid = grid or [0.0, 0.25, 0.5, 0.75, 1.0]
        qids_judged = [q for q in candidates if q in qrels and any(g > 0 for g in qrels[q].values())]
        if not qids_judged:
            raise ValueError("fit_weights: no candidate query has positive qrels")
        get = doc_text if callable(doc_text) else doc_text.__getitem__
        qid_l, q_l, d_l, p_l = [], [], [], []
        for q in qids_judged:
            for d in candidates[q]:
                qid_l.append(q)
                q_l.append(queries[q])
                d_l.append(d)
                p_l.append(get(d))
        from tqdm.auto import tqdm

        pairs_key = fingerprint_obj([qid_l, d_l, q_l])
        keys = [(m.fingerprint, pairs_key) for m in self.members]
        cache = member_cache if member_cache is not None else {}
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if todo:
            chunk, parts = 4096, []  # member scores are per pair, so chunks only pace the bar
            with tqdm(total=len(qid_l), desc="teacher dev scores", unit="pair", disable=not progress) as bar:
                for a in range(0, len(qid_l), chunk):
                    b = a + chunk
                    parts.append(np.stack([score_pairs(self.members[i], qid_l[a:b], q_l[a:b], d_l[a:b], p_l[a:b])
                                           for i in todo]))
                    bar.update(parts[-1].shape[1])
            fresh = np.concatenate(parts, axis=1)
            for j, i in enumerate(todo):
                cache[keys[i]] = fresh[j]
        raw = np.stack([cache[k] for k in keys])
        qr = Qrels({q: {d: int(g) for d, g in qrels[q].items()} for q in qids_judged})

        def value(w):
            fused = self.fuse(raw, qid_l, w)
            run: dict[str, dict[str, float]] = {}
            for q, d, s in zip(qid_l, d_l, fused):
                run.setdefault(q, {})[d] = float(s)
            return float(evaluate(qr, Run(run), metric))

        n = len(self.members)
        equal = tuple([round(1.0 / n, 6)] * n)
        combos = [equal]
        for c in itertools.product(grid, repeat=n):
            if sum(c) <= 0:
                continue
            w = tuple(round(x / sum(c), 6) for x in c)
            if w not in combos:
                combos.append(w)
        tried = [(list(w), value(list(w))) for w in combos]
        best_w, best_v = max(tried, key=lambda t: t[1])  # max keeps the first of equal values
        self.spec.weights = list(best_w)
        log.info("ensemble weights %s: %s %.4f (equal weights %.4f)", best_w, metric, best_v, tried[0][1])
        return {"weights": best_w, "metric": metric, "best": best_v, "equal": tried[0][1], "tried": tried, "queries": len(qids_judged)}
