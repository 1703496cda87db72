"""Sharded layout for corpora that do not fit one index: shards by docid range, merged search.

Layout of a sharded index folder::

    OUT/shards.json      {"format_version", "n_shards", "shards": [{"name", "first", "last", "docs"}]}
    OUT/shard-000/       an ordinary version folder (index.faiss, docids, manifest.json, ...)
    OUT/shard-001/ ...

Documents are sorted by docid (string order) and cut into ``n_shards`` contiguous ranges
of near-equal size, so a document's shard follows from its docid alone (routing an update
needs no lookup). Each shard is searched for its own top-``k`` and the per-shard lists are
merged by score (a k-way merge; every shard returns its lists sorted, so the global top-k
is within the union). ``faiss.IndexShards`` does the same inside one process but
needs labels that are unique across shards; our shards keep local labels (line numbers of
their own ``docids``) so each shard stays an ordinary, separately rebuildable version, and
the merge maps labels to docids first. On several machines each shard is served by its own
process and the same merge runs over their answers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from retrieval_distill.index.build import build_index, check_docids
from retrieval_distill.index.manifest import FORMAT_VERSION, IndexFormatError
from retrieval_distill.index.store import IndexVersion
from retrieval_distill.search.dense import DenseSearcher

if TYPE_CHECKING:  # pragma: no cover
    from retrieval_distill.models.encoder import Encoder

SHARDS_FILE = "shards.json"


def docid_ranges(docids: Sequence[str], n_shards: int) -> list[np.ndarray]:
    """Row indices of each shard: docids sorted by string, cut into ``n_shards`` ranges."""
    if n_shards < 1 or n_shards > len(docids):
        raise ValueError(f"n_shards must be in 1..{len(docids)}, got {n_shards}")
    order = np.array(sorted(range(len(docids)), key=lambda i: docids[i]), dtype=np.int64)
    return [part for part in np.array_split(order, n_shards)]


def build_sharded(
    embeddings: np.ndarray,
    docids: Sequence[str],
    out_dir: str | os.PathLike,
    n_shards: int,
    factory: str = "Flat",
    **build_kwargs: Any,
) -> Path:
    """Build ``n_shards`` version folders by docid range under ``out_dir`` (atomically:
    written to ``out_dir.tmp-<pid>`` then renamed).

    Args:
        embeddings: float32 ``(n, dim)``.
        docids: ``n`` unique docids.
        out_dir: the sharded index folder (must not exist).
        n_shards: number of shards.
        factory, build_kwargs: passed to :func:`~retrieval_distill.index.build.build_index`
            (``metric``, ``params``, ``manifest_extra``, ``encoder``, ``texts``, ``hashes``...).

    Raises:
        CorpusError: empty corpus or duplicate docids.
        FileExistsError: ``out_dir`` exists.
    """
    docids = [str(d) for d in docids]
    check_docids(docids, source=f"{out_dir}: docids")
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out}: already exists")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    texts = build_kwargs.pop("texts", None)
    hashes = build_kwargs.pop("hashes", None)
    meta = []
    for s, rows in enumerate(docid_ranges(docids, n_shards)):
        name = f"shard-{s:03d}"
        sd = [docids[i] for i in rows]
        kw = dict(build_kwargs)
        if texts is not None:
            kw["texts"] = [texts[i] for i in rows]
        if hashes is not None:
            kw["hashes"] = np.asarray(hashes)[rows]
        build_index(np.asarray(embeddings)[rows], sd, tmp / name, factory=factory, **kw)
        meta.append({"name": name, "first": sd[0], "last": sd[-1], "docs": len(sd)})
    (tmp / SHARDS_FILE).write_text(
        json.dumps({"format_version": FORMAT_VERSION, "n_shards": n_shards, "shards": meta}, indent=2) + "\n",
        encoding="utf-8",
    )
    os.rename(tmp, out)
    return out


def read_shards(path: str | os.PathLike) -> list[IndexVersion]:
    """The shard versions of a sharded folder, in docid-range order.

    Raises:
        IndexFormatError: no or invalid ``shards.json``, or a missing shard folder.
    """
    p = Path(path) / SHARDS_FILE
    if not p.exists():
        raise IndexFormatError(f"{p}: missing (not a sharded index folder)")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
        shards = meta["shards"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise IndexFormatError(f"{p}: invalid shards file ({e})") from None
    out = []
    for s in shards:
        d = Path(path) / s["name"]
        if not d.is_dir():
            raise IndexFormatError(f"{p}: shard {s['name']!r} is missing ({d})")
        out.append(IndexVersion(d))
    return out


class ShardedSearcher(DenseSearcher):
    """Search every shard of a sharded folder and merge the top-``k`` by score.

    Args:
        path: a folder made by :func:`build_sharded`.
        encoder: the document encoder of the shards (checked against each manifest);
            ``None`` loads the first shard's.
        threads: FAISS threads per shard search.

    Raises:
        IndexFormatError / EncoderMismatchError: as :class:`DenseSearcher`; shards whose
            dims or metrics disagree.
    """

    def __init__(self, path: str | os.PathLike, encoder: "Encoder | None" = None, threads: int | None = None,
                 params: dict | None = None):
        versions = read_shards(path)
        self.shards = [DenseSearcher(versions[0], encoder=encoder, threads=threads, params=params)]
        encoder = self.shards[0].encoder
        self.shards += [DenseSearcher(v, encoder=encoder, threads=threads, params=params) for v in versions[1:]]
        m0 = self.shards[0].manifest
        for s in self.shards[1:]:
            if (s.manifest.dim, s.manifest.metric) != (m0.dim, m0.metric):
                raise IndexFormatError(f"{s.version.path}: dim/metric differ from {self.shards[0].version.path}")
        self.path = Path(path)
        self.encoder = encoder
        self.manifest = m0
        self.threads = threads
        self.doc_count = sum(s.version.doc_count for s in self.shards)

    @property
    def index_version(self) -> str:
        return self.path.name

    def search_vectors(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`DenseSearcher.search_vectors`, over all shards (k-way merge by score)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.doc_count)
        parts = [s.search_vectors(q, k) for s in self.shards]
        scores = np.concatenate([p[0] for p in parts], axis=1)
        docids = np.concatenate([p[1] for p in parts], axis=1)
        scores = np.where(docids == "", -np.inf, scores)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1).astype(np.float32), np.take_along_axis(docids, top, axis=1)
