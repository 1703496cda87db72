"""Load test collections in BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).

One loader reads every collection in ``../shared/data`` (SciFact, the TREC-DL pool, ADI,
Cranfield, Vaswani). A dataset can be named three ways (see :func:`load_collection`):

* a BEIR folder path plus a split: ``../shared/data/beir/scifact`` with ``split="test"``;
* an ir_datasets-style id ``beir/scifact/test``, found under a local data root first
  (``$RD_DATA_ROOT``, then ``../shared/data`` beside the project), so it works offline;
* any other ir_datasets id, loaded through ``ir_datasets`` (online users).

Malformed input raises :class:`DataFormatError` naming the file and the 1-based line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from retrieval_distill.data.formats import (  # noqa: F401 - DataFormatError and read_jsonl are re-exported
    DataFormatError,
    iter_qrels,
    json_id,
    json_text,
    read_jsonl,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)


@dataclass
class Collection:
    """A corpus with queries and qrels of one split.

    Attributes:
        name: a readable name (``beir/scifact/test``).
        corpus: docid -> {"title": str, "text": str}, in file order.
        queries: qid -> query text (only queries of this split when qrels are known).
        qrels: qid -> {docid: grade (int)}; grade 0 means judged not relevant.
        root: the BEIR folder it came from, if any.
    """

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    root: Path | None = None

    @property
    def docids(self) -> list[str]:
        return list(self.corpus)

    def doc_text(self, docid: str) -> str:
        """Title and text joined by a space, the BEIR/Pyserini convention ("title text")."""
        d = self.corpus[docid]
        return f"{d.get('title', '')} {d.get('text', '')}".strip()

    def doc_texts(self, docids: list[str] | None = None) -> list[str]:
        return [self.doc_text(d) for d in (docids if docids is not None else self.corpus)]

    def judged_qids(self) -> list[str]:
        """Queries with at least one qrels entry of grade > 0, in query-file order."""
        return [q for q in self.queries if any(g > 0 for g in self.qrels.get(q, {}).values())]

    def subset(self, qids: list[str], name: str | None = None) -> "Collection":
        """The same corpus with only ``qids`` (queries and qrels)."""
        qs = set(qids)
        return Collection(
            name=name or self.name,
            corpus=self.corpus,
            queries={q: t for q, t in self.queries.items() if q in qs},
            qrels={q: r for q, r in self.qrels.items() if q in qs},
            root=self.root,
        )


def load_corpus(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Read a BEIR ``corpus.jsonl``: ``{"_id", "title", "text"}`` per line (other keys ignored).

    A document with neither title nor text is kept (qrels and runs may name it; Cranfield
    has two, 471 and 995) and reported in one warning with its ``file:line``.

    Returns:
        docid -> {"title": str, "text": str}, in file order.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: missing or malformed ``_id`` (not one token), a title/text that is
            not a string, duplicate docid, or no document at all (and the checks of
            :func:`~retrieval_distill.data.formats.read_jsonl`).
    """
    corpus: dict[str, dict[str, str]] = {}
    empty: list[str] = []
    for lineno, obj in read_jsonl(path):
        docid = json_id(path, lineno, obj)
        if docid in corpus:
            raise DataFormatError(f"{path}:{lineno}: duplicate docid {docid!r}")
        title, text = json_text(path, lineno, obj, "title"), json_text(path, lineno, obj, "text")
        if not (title.strip() or text.strip()):
            empty.append(f"{path}:{lineno} ({docid!r})")
        corpus[docid] = {"title": title, "text": text}
    if not corpus:
        raise DataFormatError(f"{path}: empty corpus")
    if empty:
        log.warning("%d document(s) with empty title and text, kept as empty passages: %s", len(empty), ", ".join(empty[:5]))
    return corpus


def load_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl``: ``{"_id", "text"}`` per line.

    Returns:
        qid -> query text (stripped), in file order.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: missing ``_id``/``text``, an ``_id`` that is not one token, a text
            that is not a string, duplicate qid, or empty query text.
    """
    queries: dict[str, str] = {}
    for lineno, obj in read_jsonl(path):
        if "_id" not in obj or "text" not in obj:
            raise DataFormatError(f"{path}:{lineno}: a query needs '_id' and 'text'")
        qid = json_id(path, lineno, obj)
        if qid in queries:
            raise DataFormatError(f"{path}:{lineno}: duplicate qid {qid!r}")
        text = json_text(path, lineno, obj, "text", required=True).strip()
        if not text:
            raise DataFormatError(f"{path}:{lineno}: query {qid!r} is empty")
        queries[qid] = text
    return queries


OnUnknown = Literal["error", "warn"]


def load_qrels(
    path: str | os.PathLike,
    corpus: dict | None = None,
    queries: dict | None = None,
    *,
    on_unknown: OnUnknown = "error",
) -> dict[str, dict[str, int]]:
    """Read qrels: BEIR TSV (``query-id corpus-id score``, header optional) or TREC
    (``qid 0 docid grade``, whitespace separated). Windows line endings are accepted.

    Args:
        path: the qrels file.
        corpus: if given, every docid must be in it.
        queries: if given, every qid must be in it.
        on_unknown: ``error`` (default): a docid not in ``corpus`` or a qid not in ``queries``
            raises. ``warn``: one warning states how many rows name unknown ids, and
            rows of unknown *docids* are kept (a judged document the corpus lacks still
            counts in Recall's denominator and nDCG's ideal ranking: the official TREC DL
            qrels over a passage pool) while rows of unknown *qids* are dropped (no system
            was asked those queries, so they would only add zeros to the mean).

    Returns:
        qid -> {docid: grade (int)}, in file order.

    Raises:
        FileNotFoundError: no such file.
        DataFormatError: wrong column count, a grade that is not an integer, duplicate
            (qid, docid), unknown docid or qid with ``on_unknown="error"`` (message:
            ``file:line: reason``, with the number of such rows).
    """
    if on_unknown not in ("error", "warn"):
        raise ValueError(f"on_unknown must be 'error' or 'warn', got {on_unknown!r}")
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    bad_docs: list[tuple[int, str]] = []  # (line, docid) of rows naming a docid not in the corpus
    bad_qids: list[tuple[int, str]] = []  # (line, qid) of rows naming a qid not in the queries
    for lineno, qid, docid, g in iter_qrels(path):
        if corpus is not None and docid not in corpus:
            bad_docs.append((lineno, docid))
        if queries is not None and qid not in queries:
            bad_qids.append((lineno, qid))
            if on_unknown == "warn":
                continue
        row = qrels.setdefault(qid, {})
        if docid in row:
            raise DataFormatError(f"{path}:{lineno}: duplicate qrels entry ({qid}, {docid})")
        row[docid] = g
    problems = []  # (first line, message, warning)
    if bad_qids:
        n_q = len({q for _, q in bad_qids})
        problems.append((
            bad_qids[0][0],
            f"unknown qid {bad_qids[0][1]!r} (not in the queries; {len(bad_qids)} row(s) name {n_q} such qid(s))",
            f"{len(bad_qids)} row(s) name {n_q} qid(s) not in the queries (first on line {bad_qids[0][0]}): dropped",
        ))
    if bad_docs:
        n_d = len({d for _, d in bad_docs})
        problems.append((
            bad_docs[0][0],
            f"unknown docid {bad_docs[0][1]!r} (not in the corpus; {len(bad_docs)} row(s) name {n_d} such docid(s))",
            f"{len(bad_docs)} row(s) name {n_d} docid(s) not in the corpus (first on line {bad_docs[0][0]}): kept",
        ))
    if problems and on_unknown == "error":
        line, msg, _ = min(problems)
        raise DataFormatError(f"{path}:{line}: {msg}")
    for _line, _msg, warning in problems:
        log.warning("%s: %s", path, warning)
    return qrels


def data_roots() -> list[Path]:
    """Local folders searched for ``beir/scifact``-style ids: ``$RD_DATA_ROOT`` (os.pathsep
    separated), then ``../shared/data`` beside the project."""
    roots = [Path(p) for p in os.environ.get("RD_DATA_ROOT", "").split(os.pathsep) if p]
    roots.append(PROJECT_ROOT.parent / "shared" / "data")
    return roots


def find_local(dataset_id: str) -> tuple[Path, str | None] | None:
    """Map ``beir/scifact/test`` to ``(<root>/beir/scifact, "test")`` if that folder exists."""
    parts = dataset_id.strip("/").split("/")
    for root in data_roots():
        for cut in (len(parts), len(parts) - 1):
            if cut <= 0:
                continue
            folder = root.joinpath(*parts[:cut])
            if (folder / "corpus.jsonl").exists():
                split = "/".join(parts[cut:]) or None
                return folder, split
    return None


def queries_path(folder: str | os.PathLike, queries_file: str | None = None) -> Path:
    """The queries file of a BEIR folder: ``queries_file`` if given, else ``queries.jsonl``,
    else the only ``queries*.jsonl`` there (``queries.dl19.jsonl``); the ``queries.jsonl``
    path when none of these exists."""
    folder = Path(folder)
    qpath = folder / (queries_file or "queries.jsonl")
    if queries_file is None and not qpath.exists():
        cands = sorted(folder.glob("queries*.jsonl"))
        if len(cands) == 1:
            qpath = cands[0]
    return qpath


def load_beir_folder(
    folder: str | os.PathLike,
    split: str | None = "test",
    *,
    queries_file: str | None = None,
    qrels_file: str | None = None,
    check_docids: bool = True,
    on_unknown: OnUnknown = "error",
) -> Collection:
    """Load a BEIR folder.

    Args:
        folder: holds ``corpus.jsonl``, ``queries.jsonl`` (or ``queries_file``) and ``qrels/``.
        split: qrels split (``qrels/<split>.tsv``); ``None`` loads no qrels and keeps all queries.
        queries_file: another queries file name inside ``folder`` (``queries.dl19.jsonl``).
        qrels_file: another qrels path (relative to ``folder`` or absolute).
        check_docids: check that every qrels docid is in the corpus (``False``: not checked).
        on_unknown: a qrels qid not in the queries file, or a docid not in the corpus:
            ``error`` (default) or ``warn`` (stated counts; see :func:`load_qrels`).

    Returns:
        the :class:`Collection`; with a split, only queries that have qrels in it (a query
        without judgments in this split is not part of it, e.g. SciFact's train queries in
        ``test``).

    Raises:
        FileNotFoundError: a file is missing (message lists what was looked for).
        DataFormatError: malformed content, or qrels naming unknown qids or docids.
    """
    folder = Path(folder)
    if not (folder / "corpus.jsonl").exists():
        raise FileNotFoundError(f"{folder}: no corpus.jsonl (expected a BEIR folder)")
    corpus = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(queries_path(folder, queries_file))
    qrels: dict[str, dict[str, int]] = {}
    if qrels_file or split:
        rp = Path(qrels_file) if qrels_file else folder / "qrels" / f"{split}.tsv"
        if not rp.is_absolute() and qrels_file:
            rp = folder / rp
        if not rp.exists():
            have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
            raise FileNotFoundError(f"{rp}: no such qrels file (splits here: {', '.join(have) or 'none'})")
        qrels = load_qrels(rp, corpus if check_docids else None, queries, on_unknown=on_unknown)
        queries = {q: t for q, t in queries.items() if q in qrels}
    name = f"{folder.name}/{split}" if split else folder.name
    return Collection(name=name, corpus=corpus, queries=queries, qrels=qrels, root=folder)


def load_collection(spec: str | os.PathLike, split: str | None = None, **kwargs) -> Collection:
    """Load a collection by BEIR folder path or dataset id (see module docstring).

    Args:
        spec: a folder path, or an id such as ``beir/scifact/test``.
        split: the qrels split when ``spec`` is a folder (default ``test``).

        **kwargs: passed to :func:`load_beir_folder` (``on_unknown``, ``check_docids``, ...).

    Raises:
        FileNotFoundError / DataFormatError: as :func:`load_beir_folder`.
    """
    return _load(spec, split, "test", **kwargs)


def _load(spec: str | os.PathLike, split: str | None, default_split: str | None, **kwargs) -> Collection:
    """Folder path, local id or ir_datasets id: ``split``, else the id's own split, else
    ``default_split`` (``None``: no qrels)."""
    p = Path(spec)
    if p.is_dir():
        return load_beir_folder(p, split or default_split, **kwargs)
    local = find_local(str(spec))
    if local is not None:
        folder, sp = local
        c = load_beir_folder(folder, split or sp or default_split, **kwargs)
        c.name = str(spec)
        return c
    return _load_ir_datasets(str(spec))


def load_corpus_collection(spec: str | os.PathLike, split: str | None = None) -> Collection:
    """The collection an index or a corpus pass needs: its corpus. With ``split`` as
    :func:`load_collection`; without, a folder (or local id) is loaded with *no* qrels split, so
    a corpus whose folder has no ``qrels/test.tsv`` (the TREC-DL pool: ``dl19``,
    ``dl19.only-passages-in-corpus``; a corpus-only folder) is indexed without naming one.

    Raises:
        FileNotFoundError / DataFormatError: as :func:`load_collection`.
    """
    return _load(spec, split, None)


def _load_ir_datasets(dataset_id: str) -> Collection:
    """Load an ir_datasets id (online users; needs the dataset downloaded or downloadable)."""
    import ir_datasets

    try:
        ds = ir_datasets.load(dataset_id)
    except KeyError:
        raise FileNotFoundError(
            f"dataset {dataset_id!r}: not a folder, not under the local data roots "
            f"({', '.join(map(str, data_roots()))}), and not an ir_datasets id"
        ) from None
    try:
        corpus = {d.doc_id: {"title": getattr(d, "title", "") or "", "text": d.text} for d in ds.docs_iter()}
        queries = {q.query_id: q.text for q in ds.queries_iter()} if ds.has_queries() else {}
        qrels: dict[str, dict[str, int]] = {}
        if ds.has_qrels():
            for r in ds.qrels_iter():
                qrels.setdefault(r.query_id, {})[r.doc_id] = int(r.relevance)
            queries = {q: t for q, t in queries.items() if q in qrels}
    except (OSError, RuntimeError, ValueError) as e:  # requests' errors are OSErrors; ir_datasets raises these
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise FileNotFoundError(
            f"dataset {dataset_id!r}: ir_datasets could not download or read it ({reason[:300]}). Offline, give a local "
            f"BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) or an id under the local data roots "
            f"({', '.join(map(str, data_roots()))})"
        ) from e
    return Collection(name=dataset_id, corpus=corpus, queries=queries, qrels=qrels)


def register_ir_datasets(folder: str | os.PathLike, name: str, splits: list[str] | None = None) -> list[str]:
    """Register a local BEIR folder with ``ir_datasets`` as ``<name>`` and ``<name>/<split>``.

    After this, ``ir_datasets.load("<name>/test")`` reads the local files (no download).

    Returns:
        the ids registered.
    """
    import ir_datasets
    from ir_datasets.datasets.base import Dataset
    from ir_datasets.formats import BaseDocs, BaseQrels, BaseQueries, GenericDoc, GenericQuery, TrecQrel

    folder = Path(folder)
    splits = splits or sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))

    class _Docs(BaseDocs):
        def docs_iter(self):
            for docid, d in load_corpus(folder / "corpus.jsonl").items():
                yield GenericDoc(docid, f"{d['title']} {d['text']}".strip())

        def docs_cls(self):
            return GenericDoc

        def docs_namespace(self):
            return name

        def docs_lang(self):
            return "en"

        def docs_count(self):
            return sum(1 for _ in read_jsonl(folder / "corpus.jsonl"))

    class _Queries(BaseQueries):
        def __init__(self, keep=None):
            self.keep = keep

        def queries_iter(self):
            for qid, text in load_queries(folder / "queries.jsonl").items():
                if self.keep is None or qid in self.keep():
                    yield GenericQuery(qid, text)

        def queries_cls(self):
            return GenericQuery

        def queries_namespace(self):
            return name

        def queries_lang(self):
            return "en"

    class _Qrels(BaseQrels):
        def __init__(self, split):
            self.split = split

        def qrels_iter(self):
            for qid, row in load_qrels(folder / "qrels" / f"{self.split}.tsv").items():
                for docid, g in row.items():
                    yield TrecQrel(qid, docid, g, "0")

        def qrels_cls(self):
            return TrecQrel

        def qrels_defs(self):
            return {}

    ids = []
    docs = _Docs()
    if name not in ir_datasets.registry:
        ir_datasets.registry.register(name, Dataset(docs, _Queries()))
    ids.append(name)
    for split in splits:
        sid = f"{name}/{split}"
        if sid not in ir_datasets.registry:
            keep = lambda s=split: set(load_qrels(folder / "qrels" / f"{s}.tsv"))  # noqa: E731
            ir_datasets.registry.register(sid, Dataset(docs, _Queries(keep), _Qrels(split)))
        ids.append(sid)
    return ids
