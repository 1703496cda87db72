"""Synthetic training queries for a corpus with no judged queries (``rd queries synth``).

The user supplies only a corpus; the queries come from the documents themselves, each
paired with its source document as the positive:

* ``title``: the document's title (a short, topical query; skipped when the title is
  empty or a single word);
* ``sentence``: one sentence sampled from the body (the Inverse Cloze Task's pseudo-query,
  Lee et al. 2019, "Latent Retrieval for Weakly Supervised Open Domain Question
  Answering", arXiv:1906.00300), cut to ``sentence_words`` words;
* ``ict``: the Inverse Cloze Task proper (Lee et al. 2019, section 4): a sampled sentence
  is the query and the positive is the document *with that sentence removed* (kept in
  with probability ``ict_keep``, 0.1 as in the paper, so lexical matching is not
  unlearned). The masked texts go to ``positives.jsonl``; point a student config's
  ``positive_texts`` at it. Without the removal a sentence query is a verbatim copy of
  its positive, and a student learns to match copied words (measured on Cranfield in
  ``eval/reports/students.md``). Not in the default kinds, which keep earlier outputs
  byte-identical;
* ``keywords``: 2-4 salient terms of the document, sampled from its top TF-IDF terms over
  the corpus (scikit-learn ``TfidfVectorizer``, English stop words removed) and kept in
  the order they first occur in the document (keyword queries as in doc2query-style
  augmentation without a generator model).

Identical query texts of one kind from several documents become one query with all of
them as positives. The teacher then labels each query's candidates (``rd bm25 search`` ->
``rd teacher score``), and ``rd student train`` trains on them.

Output (BEIR layout, each file written atomically): ``queries.jsonl`` (``_id``, ``text``,
``kind``), ``qrels/<split>.tsv`` (``query-id corpus-id score``, score 1),
``synth.json`` (settings, counts, corpus fingerprint), ``positives.jsonl`` when ``ict``
queries exist (``qid``, ``docid``, ``text``: the positive's training text) and, by default, a
``corpus.jsonl`` symbolic link to the source corpus (never a copy), so the folder loads
with ``load_collection(out_dir, split)``. Everything is seeded: the same corpus, settings
and seed give byte-identical files.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from retrieval_distill.data.collections import DataFormatError, find_local, load_corpus, load_qrels
from retrieval_distill.utils import fingerprint_files, write_json_atomic, write_text_atomic

KINDS = ("title", "sentence", "keywords", "ict")
DEFAULT_KINDS = ("title", "sentence", "keywords")
_SENT_SPLIT = re.compile(r"(?<=[.!?;])\s+")
_WS = re.compile(r"\s+")
# Words that are not in scikit-learn's English stop list but carry no topic in abstracts
# (no library ships such a list for scientific prose, so it is kept here, short).
EXTRA_STOP_WORDS = frozenset(
    "does did using used use uses based paper papers described describes presented presents discussed "
    "discusses new general special given shown results result study studies method methods approach "
    "various certain particular possible different present proposed problem problems report reports "
    "article including include includes obtained number way ways make makes made like type types".split()
)
# terms of 3+ characters that start with a letter (keeps "1401"-style numbers out, keeps "x-ray")
_TOKEN = r"(?u)\b[^\W\d_][\w\-]{2,}\b"


@dataclass
class SynthQueries:
    """Generated queries.

    Attributes:
        queries: qid -> query text.
        qrels: qid -> {docid: 1} (the source documents).
        kinds: qid -> ``title`` / ``sentence`` / ``keywords`` / ``ict``.
        positive_texts: qid -> {docid: training text of that positive} for ``ict`` queries
            (the document, title first, with the query sentence removed or, with
            probability ``ict_keep``, kept).
        stats: counts per kind, documents skipped per kind, merged duplicates.
    """

    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    positive_texts: dict[str, dict[str, str]] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)


def _clean(text: str) -> str:
    text = _WS.sub(" ", text).strip()
    return re.sub(r"\s*[.;:,]+$", "", text).strip()


def title_query(doc: dict[str, str], min_words: int = 2) -> str | None:
    """The title as a query, or ``None`` if it has fewer than ``min_words`` words."""
    t = _clean(doc.get("title", "") or "")
    return t if len(t.split()) >= min_words else None


def _sentences(doc: dict[str, str], min_words: int) -> tuple[list[str], list[str], list[int]]:
    """The body's sentences as split, the same sentences cleaned, and the indexes of those
    usable as queries (``min_words`` words or more, not the title)."""
    title = _clean(doc.get("title", "") or "").lower()
    raw = _SENT_SPLIT.split(doc.get("text", "") or "")
    cleaned = [_clean(s) for s in raw]
    ok = [i for i, s in enumerate(cleaned) if len(s.split()) >= min_words and s.lower() != title]
    return raw, cleaned, ok


def sentence_query(doc: dict[str, str], rng: random.Random, min_words: int = 5, max_words: int = 32) -> str | None:
    """A sentence sampled from the body (at least ``min_words`` words, cut to ``max_words``),
    never the title itself; ``None`` when no sentence is long enough."""
    _, cleaned, ok = _sentences(doc, min_words)
    if not ok:
        return None
    return " ".join(cleaned[rng.choice(ok)].split()[:max_words])


def ict_query(
    doc: dict[str, str], rng: random.Random, min_words: int = 5, max_words: int = 32, keep: float = 0.1
) -> tuple[str, str] | None:
    """An Inverse Cloze Task pair (Lee et al. 2019, arXiv:1906.00300): ``(query, positive
    text)`` where the query is a sampled body sentence (cut to ``max_words``) and the
    positive text is ``"title body"`` without that sentence, except with probability
    ``keep`` (then the whole document). ``None`` when no sentence is long enough or the
    document has nothing left once the sentence is removed."""
    raw, cleaned, ok = _sentences(doc, min_words)
    if not ok:
        return None
    i = rng.choice(ok)
    query = " ".join(cleaned[i].split()[:max_words])
    kept = rng.random() < keep
    body = raw if kept else raw[:i] + raw[i + 1 :]
    text = f"{doc.get('title', '') or ''} {' '.join(s for s in body if s.strip())}".strip()
    return (query, text) if text else None


def synthesize_queries(
    corpus: dict[str, dict[str, str]],
    kinds: tuple[str, ...] | list[str] = DEFAULT_KINDS,
    seed: int = 13,
    keywords: tuple[int, int] = (2, 4),
    keyword_pool: int = 8,
    sentence_words: tuple[int, int] = (5, 32),
    max_docs: int | None = None,
    ict_keep: float = 0.1,
) -> SynthQueries:
    """Make training queries from the documents of ``corpus``.

    Args:
        corpus: docid -> {"title", "text"} (as :func:`~retrieval_distill.data.collections.load_corpus`).
        kinds: which kinds to make (subset of ``title``, ``sentence``, ``keywords``, ``ict``).
        seed: seeds every random choice (sentence picked, keywords sampled, documents sampled).
        keywords: (min, max) number of terms in a keyword query.
        keyword_pool: keyword terms are sampled from the document's top-``keyword_pool``
            TF-IDF terms.
        sentence_words: (min, max) words of a sentence query.
        max_docs: use a seeded sample of this many documents (all when ``None``).
        ict_keep: probability that an ``ict`` positive keeps its query sentence (0.1 in
            Lee et al. 2019).

    Returns:
        the queries, qrels and per-kind statistics.

    Raises:
        ValueError: an unknown kind, bad ranges, or an empty corpus.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"unknown query kinds {bad or kinds}; choose from {', '.join(KINDS)}")
    if not corpus:
        raise ValueError("empty corpus: nothing to make queries from")
    if not (1 <= keywords[0] <= keywords[1]) or keyword_pool < keywords[1]:
        raise ValueError(f"keywords={keywords} must satisfy 1 <= min <= max <= keyword_pool={keyword_pool}")
    if not 0.0 <= ict_keep <= 1.0:
        raise ValueError(f"ict_keep={ict_keep} must be a probability in [0, 1]")
    docids = list(corpus)
    if max_docs is not None and max_docs < len(docids):
        docids = sorted(random.Random(seed).sample(docids, max_docs), key=docids.index)
    out = SynthQueries()
    by_text: dict[tuple[str, str], str] = {}
    stats = {"documents": len(docids), "seed": seed, "per_kind": {}, "skipped": {}, "merged_duplicates": 0}

    def add(kind: str, docid: str, text: str | None, positive_text: str | None = None) -> None:
        if not text:
            stats["skipped"][kind] = stats["skipped"].get(kind, 0) + 1
            return
        key = (kind, text.lower())
        if key in by_text:  # the same query from another document: one query, both positive
            out.qrels[by_text[key]][docid] = 1
            if positive_text is not None:
                out.positive_texts[by_text[key]][docid] = positive_text
            stats["merged_duplicates"] += 1
            return
        qid = f"synth-{kind}-{docid}"
        by_text[key] = qid
        out.queries[qid] = text
        out.qrels[qid] = {docid: 1}
        out.kinds[qid] = kind
        if positive_text is not None:
            out.positive_texts[qid] = {docid: positive_text}
        stats["per_kind"][kind] = stats["per_kind"].get(kind, 0) + 1

    keyword_terms = _salient_terms(corpus, docids, keyword_pool) if "keywords" in kinds else {}
    for docid in docids:
        doc = corpus[docid]
        # one RNG per document and kind: adding or removing a kind never changes another's picks
        if "title" in kinds:
            add("title", docid, title_query(doc))
        if "sentence" in kinds:
            rng = random.Random(f"{seed}:sentence:{docid}")
            add("sentence", docid, sentence_query(doc, rng, *sentence_words))
        if "ict" in kinds:
            rng = random.Random(f"{seed}:ict:{docid}")
            pair = ict_query(doc, rng, *sentence_words, keep=ict_keep)
            add("ict", docid, *(pair or (None,)))
        if "keywords" in kinds:
            rng = random.Random(f"{seed}:keywords:{docid}")
            pool = keyword_terms.get(docid, [])
            if len(pool) < keywords[0]:
                add("keywords", docid, None)
                continue
            k = rng.randint(keywords[0], min(keywords[1], len(pool)))
            picked = rng.sample(pool, k)
            low = f"{doc.get('title', '')} {doc.get('text', '')}".lower()
            picked.sort(key=lambda t: low.find(t))
            add("keywords", docid, " ".join(picked))
    stats["queries"] = len(out.queries)
    out.stats = stats
    return out


def _salient_terms(corpus: dict[str, dict[str, str]], docids: list[str], top: int) -> dict[str, list[str]]:
    """docid -> its top-``top`` TF-IDF terms (fitted over the whole corpus), best first."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    all_ids = list(corpus)
    texts = [f"{corpus[d].get('title', '')} {corpus[d].get('text', '')}" for d in all_ids]
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    stop = sorted(ENGLISH_STOP_WORDS | EXTRA_STOP_WORDS)
    vec = TfidfVectorizer(stop_words=stop, token_pattern=_TOKEN, sublinear_tf=True, lowercase=True, max_df=0.5)
    m = vec.fit_transform(texts).tocsr()
    vocab = vec.get_feature_names_out()
    row_of = {d: i for i, d in enumerate(all_ids)}
    out = {}
    for d in docids:
        row = m.getrow(row_of[d])
        if row.nnz == 0:
            out[d] = []
            continue
        title = set(re.findall(_TOKEN, (corpus[d].get("title") or "").lower()))
        # title terms count 1.5x (titles name the topic); ties broken by term (deterministic)
        weighted = [(-w * (1.5 if t in title else 1.0), str(t)) for w, t in zip(row.data, vocab[row.indices])]
        out[d] = [t for _, t in sorted(weighted)[:top]]
    return out


def resolve_corpus_path(spec: str | os.PathLike) -> Path:
    """A ``corpus.jsonl`` path from a file path, a BEIR folder, or a local dataset id
    (``classic/adi``).

    Raises:
        FileNotFoundError: nothing found.
    """
    p = Path(spec)
    if p.is_file():
        return p
    if (p / "corpus.jsonl").is_file():
        return p / "corpus.jsonl"
    local = find_local(str(spec))
    if local is not None:
        return local[0] / "corpus.jsonl"
    raise FileNotFoundError(f"{spec}: not a corpus.jsonl, a BEIR folder, or a local dataset id")


def write_synth(
    result: SynthQueries,
    out_dir: str | os.PathLike,
    corpus_path: str | os.PathLike | None = None,
    split: str = "train",
    settings: dict | None = None,
    link_corpus: bool = True,
) -> Path:
    """Write ``queries.jsonl``, ``qrels/<split>.tsv``, ``synth.json`` (and a ``corpus.jsonl``
    symlink) into ``out_dir``, each atomically.

    Raises:
        FileExistsError: ``out_dir/corpus.jsonl`` exists and is not a link to ``corpus_path``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"_id": q, "text": t, "kind": result.kinds[q]}, ensure_ascii=False) for q, t in result.queries.items()
    ]
    write_text_atomic(out / "queries.jsonl", "\n".join(lines) + "\n")
    rows = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, r in result.qrels.items() for d, g in r.items()]
    write_text_atomic(out / "qrels" / f"{split}.tsv", "\n".join(rows) + "\n")
    info = {"split": split, **(settings or {}), "stats": result.stats}
    if result.positive_texts:
        pos = [
            json.dumps({"qid": q, "docid": d, "text": t}, ensure_ascii=False)
            for q, r in result.positive_texts.items()
            for d, t in r.items()
        ]
        write_text_atomic(out / "positives.jsonl", "\n".join(pos) + "\n")
        info["positive_texts"] = "positives.jsonl"
    if corpus_path is not None:
        corpus_path = Path(corpus_path).resolve()
        info["corpus"] = str(corpus_path)
        info["corpus_fingerprint"] = fingerprint_files([corpus_path])
        if link_corpus:
            _link_atomic(out / "corpus.jsonl", corpus_path)
    write_json_atomic(out / "synth.json", info)
    return out


def _link_atomic(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` (never a copy), atomically. A symlink already there
    that points elsewhere (a work folder copied with ``cp -r`` keeps links to the original's
    files) is re-pointed: a link holds no data.

    Raises:
        FileExistsError: ``link`` exists and is a file or folder, not a symlink."""
    target = Path(target).resolve()
    if link.is_symlink() and link.resolve() == target:
        return
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a link to {target}")
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def synth_corpus(
    corpus: str | os.PathLike,
    out_dir: str | os.PathLike,
    kinds: tuple[str, ...] | list[str] = DEFAULT_KINDS,
    seed: int = 13,
    split: str = "train",
    max_docs: int | None = None,
    link_corpus: bool = True,
    **options,
) -> SynthQueries:
    """Read a corpus, make queries (:func:`synthesize_queries`) and write them (:func:`write_synth`).

    Raises:
        FileNotFoundError: no corpus; DataFormatError: a malformed corpus line (``file:line``).
    """
    path = resolve_corpus_path(corpus)
    docs = load_corpus(path)
    res = synthesize_queries(docs, kinds=tuple(kinds), seed=seed, max_docs=max_docs, **options)
    if not res.queries:
        raise DataFormatError(f"{path}: no document yielded a query of kinds {list(kinds)}")
    settings = {"kinds": list(kinds), "seed": seed, "max_docs": max_docs, **{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}}
    write_synth(res, out_dir, corpus_path=path, split=split, settings=settings, link_corpus=link_corpus)
    return res


def teacher_positives(
    synth_dir: str | os.PathLike,
    candidates: str | os.PathLike | list[str | os.PathLike],
    scores: str | os.PathLike | list[str | os.PathLike],
    out_dir: str | os.PathLike,
    split: str = "train",
) -> dict:
    """Relabel synthetic queries with the teacher: drop each query's source document(s) from
    its candidate list and make the teacher's top-scored remaining candidate the positive.

    A synthetic query is copied from its source document (a title, a sentence, its salient
    terms), so "rank the source first" teaches lexical copying, which real queries do not
    reward (``eval/reports/students.md``: the BM25 + MiniLM teacher's Cranfield student moved
    from −0.002 to +0.010 nDCG@10 with this). The teacher's preferences among the *other*
    documents are ordinary relevance judgements; the positive is its top-1 among them (ties:
    the larger docid), the negatives are drawn from the rest as usual. This is our own step:
    GPL (Wang et al. 2022) keeps the source passage as the positive; no library does this.

    Args:
        synth_dir: a ``rd queries synth`` folder (``queries.jsonl``, ``corpus.jsonl``,
            ``qrels/<split>.tsv`` naming each query's source documents).
        candidates: the synthetic queries' candidates (TREC run or any ``rd teacher score``
            input), or a list of them (e.g. the train and dev lists of a pipeline; merged).
        scores: the teacher's complete score folder over those candidates, or a list of
            folders (merged).
        out_dir: written: ``queries.jsonl`` and ``corpus.jsonl`` (links to ``synth_dir``'s
            targets), ``qrels/<split>.tsv`` (one positive per query, grade 1) and
            ``candidates.trec`` (the lists without the sources), each atomically.
        split: the qrels split.

    Returns:
        counts: ``queries`` relabelled, ``dropped_pairs`` (source pairs removed),
        ``no_candidates`` (queries left with no candidate: skipped).

    Raises:
        FileNotFoundError: a missing input.
        FileExistsError: ``out_dir`` holds a ``corpus.jsonl`` or ``queries.jsonl`` that is not a
            link to ``synth_dir``'s.
        DataFormatError: a malformed qrels line (``file:line``).
        ValueError: a candidate the teacher did not score (the score file is for other candidates).
    """
    from retrieval_distill.evaluation.runs import write_run
    from retrieval_distill.teachers.scoring import read_candidates, scores_dict

    src_dir, out = Path(synth_dir), Path(out_dir)
    qrels_path = src_dir / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise FileNotFoundError(f"{qrels_path}: no qrels in the synthetic folder")
    source = {q: {d for d, g in row.items() if g > 0} for q, row in load_qrels(qrels_path).items()}
    cands: dict[str, list[str]] = {}
    for c in candidates if isinstance(candidates, list) else [candidates]:
        cands.update(read_candidates(c).pairs)
    sc: dict[str, dict[str, float]] = {}
    for f in scores if isinstance(scores, list) else [scores]:
        sc.update(scores_dict(f))
    relabelled: dict[str, dict[str, float]] = {}
    qrels_rows = ["query-id\tcorpus-id\tscore"]
    counts = {"queries": 0, "dropped_pairs": 0, "no_candidates": 0}
    for q, docs in cands.items():
        rest = [d for d in docs if d not in source.get(q, ())]
        counts["dropped_pairs"] += len(docs) - len(rest)
        if not rest:
            counts["no_candidates"] += 1
            continue
        missing = [d for d in rest if d not in sc.get(q, {})]
        if missing:
            raise ValueError(f"{scores}: no teacher score for ({q}, {missing[0]}): scores of other candidates than {candidates}")
        relabelled[q] = {d: sc[q][d] for d in rest}
        qrels_rows.append(f"{q}\t{max(rest, key=lambda d: (sc[q][d], d))}\t1")
        counts["queries"] += 1
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (src_dir / name).is_file():
            raise FileNotFoundError(f"{src_dir / name}: missing from the synthetic folder")
        _link_atomic(out / name, src_dir / name)
    write_text_atomic(out / "qrels" / f"{split}.tsv", "\n".join(qrels_rows) + "\n")
    write_run(out / "candidates.trec", relabelled, tag="teacher-positives")
    names = lambda x: [str(p) for p in x] if isinstance(x, list) else str(x)  # noqa: E731
    write_json_atomic(out / "teacher_positives.json", {"synth": str(src_dir), "candidates": names(candidates), "scores": names(scores), **counts})
    return counts
