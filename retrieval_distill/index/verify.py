"""``rd index verify``: check an index version against its manifest and a fresh encoding.

Checks, in order (each failure is reported with the file it concerns):

1. the version loads: manifest format, docids (no duplicates, not empty), doc hashes;
2. counts and dims: docids lines vs. manifest ``doc_count``, FAISS ``ntotal`` and ``d`` vs.
   the manifest, tombstones count;
3. the corpus (when it can be loaded): its fingerprint vs. the manifest's (a mismatch means
   the index is stale, not corrupt: reported as a warning);
4. a sample of stored vectors against a fresh encoding of the same documents: cosine
   between the reconstructed vector and the fresh one must reach a floor that depends on
   the index's compression (exact storage 0.999, SQ 0.98, PQ 0.7; at most the bf16 check's
   floor, 0.99, for vectors a ``dtype: bf16`` pass encoded, since the fresh encoding is
   fp32), and each freshly
   encoded document should come back as its own top-10 hit ("self-recall").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from retrieval_distill.index.manifest import IndexError_
from retrieval_distill.index.store import IndexVersion

if TYPE_CHECKING:  # pragma: no cover
    from retrieval_distill.models.encoder import Encoder


@dataclass
class VerifyReport:
    version: str
    ok: bool = True
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    min_cosine: float | None = None
    self_recall_at_10: float | None = None

    def fail(self, msg: str) -> None:
        self.ok = False
        self.problems.append(msg)

    def __str__(self) -> str:
        lines = [f"verify {self.version}: {'OK' if self.ok else 'FAILED'}"]
        lines += [f"  ok: {c}" for c in self.checks]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def cosine_floor(factory: str) -> float:
    """Least cosine between a stored (reconstructed) vector and a fresh encoding."""
    f = factory.upper()
    if "PQ" in f:
        return 0.7
    if "SQ" in f:
        return 0.98
    return 0.999


def reconstruct(index, labels: np.ndarray) -> np.ndarray:
    """Stored vectors of ``labels`` (approximate for compressed codes)."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return np.vstack([index.reconstruct(int(lab)) for lab in labels]).astype(np.float32)


def verify_version(
    version: IndexVersion,
    corpus=None,
    encoder: "Encoder | None" = None,
    sample: int = 16,
    seed: int = 0,
) -> VerifyReport:
    """Verify ``version`` (see the module docstring).

    Args:
        version: the version to check.
        corpus: a Collection / mapping / (docids, texts) to compare with; ``None`` loads
            ``manifest.corpus`` when it names a loadable dataset.
        encoder: the document encoder; ``None`` loads the manifest's.
        sample: documents to re-encode.

    Returns:
        a :class:`VerifyReport` (``ok`` False when any check failed).
    """
    from retrieval_distill.index.build import corpus_fingerprint, corpus_items, doc_hashes

    rep = VerifyReport(version=str(version.path))
    try:
        version.load()
    except (IndexError_, FileNotFoundError) as e:
        rep.fail(str(e))
        return rep
    m = version.manifest
    rep.checks.append(
        f"loads: format {m.format_version}, {m.doc_count} docs, ntotal {m.ntotal}, dim {m.dim}, "
        f"{m.tombstones} tombstones, factory {m.factory}"
    )
    if corpus is None and m.corpus:
        try:
            from retrieval_distill.data.collections import load_corpus_collection

            corpus = load_corpus_collection(m.corpus)
        except (FileNotFoundError, ValueError) as e:
            rep.warnings.append(f"corpus {m.corpus!r} not loadable ({e}); fresh-encoding check skipped")
    if corpus is None:
        return rep
    docids, texts, _ = corpus_items(corpus)
    hashes = doc_hashes(docids, texts)
    cfp = corpus_fingerprint(docids, hashes)
    if cfp != m.corpus_fingerprint:
        rep.warnings.append(f"corpus fingerprint {cfp} != manifest {m.corpus_fingerprint}: the index is stale (run `rd index rebuild`)")
    else:
        rep.checks.append(f"corpus fingerprint {cfp} matches")
    text_of = dict(zip(docids, texts))
    hash_of = dict(zip(docids, hashes))
    tomb = set(version.tombstones.tolist())
    live = [(lab, d) for lab, d in enumerate(version.docids) if d and lab not in tomb and d in text_of
            and hash_of[d] == version.doc_hashes[lab]]
    if not live:
        rep.fail("no document of the corpus matches the index's documents")
        return rep
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(live), size=min(sample, len(live)), replace=False)
    labels = np.array([live[i][0] for i in pick], dtype=np.int64)
    sdocids = [live[i][1] for i in pick]
    if encoder is None:
        from retrieval_distill.search.dense import _load_encoder_for

        # a fresh encoding truncates documents as the build did (rd index build --max-length)
        encoder = _load_encoder_for(version, max_length=m.extra.get("max_length"))
    from retrieval_distill.search.dense import DenseSearcher

    searcher = DenseSearcher(version, encoder=encoder)
    fresh = encoder.encode_documents([text_of[d] for d in sdocids])
    stored = reconstruct(version.index, labels)
    cos = np.sum(fresh * stored, axis=1) / (np.linalg.norm(fresh, axis=1) * np.linalg.norm(stored, axis=1) + 1e-12)
    rep.min_cosine = float(cos.min())
    floor = cosine_floor(m.factory)
    if m.extra.get("dtype") == "bf16":  # stored vectors from a bf16 pass; the fresh ones are fp32
        from retrieval_distill.models.encoder import BF16_MIN_COSINE

        floor = min(floor, float((m.extra.get("speed_check") or {}).get("floor", BF16_MIN_COSINE)))
    if rep.min_cosine < floor:
        worst = int(np.argmin(cos))
        rep.fail(f"{version.path / 'index.faiss'}: stored vector of docid {sdocids[worst]!r} has cosine "
                 f"{cos[worst]:.4f} with a fresh encoding (< {floor} for {m.factory})")
    else:
        rep.checks.append(f"{len(labels)} sampled vectors match a fresh encoding (min cosine {rep.min_cosine:.5f} >= {floor})")
    _, hits = searcher.search_vectors(fresh, 10)
    rep.self_recall_at_10 = float(np.mean([d in row for d, row in zip(sdocids, hits)]))
    msg = f"self-recall@10 of the sample {rep.self_recall_at_10:.3f}"
    if rep.self_recall_at_10 < 0.9:
        rep.warnings.append(msg + " (< 0.9: near-duplicates or a lossy index)")
    else:
        rep.checks.append(msg)
    return rep
