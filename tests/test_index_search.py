"""DenseSearcher / AsymmetricSearcher / ShardedSearcher and the IndexStore on ADI with MiniLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import index_support as S
from retrieval_distill.index.build import build_index
from retrieval_distill.index.manifest import EncoderMismatchError, IndexFormatError
from retrieval_distill.index.shards import ShardedSearcher, build_sharded, docid_ranges
from retrieval_distill.index.store import IndexStore, IndexVersion
from retrieval_distill.search.dense import AsymmetricSearcher, DenseSearcher


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    docids, emb, _ = S.adi_encoded()
    return build_index(emb, docids, tmp_path_factory.mktemp("flat") / "v", encoder=S.encoder(), texts=S.adi().doc_texts())


def test_dense_searcher_matches_exact_scores(flat):
    docids, emb, _ = S.adi_encoded()
    s = DenseSearcher(flat, S.encoder())
    query = S.adi().queries["1"]
    hits = s.search(query, k=5)
    q = S.encoder().encode_queries([query])[0]
    exact = emb @ q
    order = np.argsort(-exact)[:5]
    assert [h.docid for h in hits] == [docids[i] for i in order]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([h.score for h in hits], exact[order], atol=1e-5)

    batch = s.batch_search({"1": query, "2": S.adi().queries["2"]}, k=5)
    assert list(batch) == ["1", "2"] and batch["1"] == hits
    assert s.batch_search([query], k=5) == [hits]
    assert len(s.search(query, k=500)) == 82  # k clamped to the corpus
    scores, ids = s.search_vectors(q[None, :], 3)
    assert scores.shape == (1, 3) and list(ids[0]) == [docids[i] for i in order[:3]]


def test_dense_searcher_bad_input(flat):
    s = DenseSearcher(flat, S.encoder())
    with pytest.raises(ValueError, match="empty query"):
        s.search("   ", 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        s.search("documentation", 0)
    with pytest.raises(ValueError, match=r"shape \(n, 384\)"):
        s.search_vectors(np.zeros((2, 10), dtype=np.float32), 3)
    assert s.batch_search({}, 3) == {}


def test_encoder_checks(flat, tmp_path):
    docids, emb, _ = S.adi_encoded()
    # an index whose documents a different model encoded: refused, naming the manifest
    other = build_index(emb, docids, tmp_path / "teacher", manifest_extra={
        "encoder": {"name": "some-teacher", "fingerprint": "0123456789abcdef"}, "documents_side": "teacher"})
    with pytest.raises(EncoderMismatchError, match=r"manifest.json: documents were encoded by 'some-teacher'"):
        DenseSearcher(other, S.encoder())
    # the manifest's encoder cannot be found: clear error naming the file
    with pytest.raises(IndexFormatError, match=r"teacher/manifest.json: the index's encoder cannot be loaded"):
        DenseSearcher(other)

    from retrieval_distill.models import resolve_model
    from retrieval_distill.models.encoder import Encoder

    with pytest.raises(EncoderMismatchError, match="symmetric"):
        AsymmetricSearcher(flat, S.encoder())
    # asymmetric: documents by the "teacher" (MiniLM), queries by a "student" in its space
    # (here the same weights under another path, so the answers must equal symmetric search)
    student = tmp_path / "student"
    student.symlink_to(resolve_model("all-MiniLM-L6-v2"))
    asym = Encoder("all-MiniLM-L6-v2", query_model=str(student), show_progress=False)
    assert not asym.symmetric
    a = AsymmetricSearcher(flat, asym)
    query = S.adi().queries["3"]
    assert a.search(query, 10) == DenseSearcher(flat, S.encoder()).search(query, 10)
    with pytest.raises(EncoderMismatchError, match="some-teacher"):
        AsymmetricSearcher(other, asym)


def test_store_publish_switch_and_cleanup(tmp_path):
    docids, emb, _ = S.adi_encoded()
    store = IndexStore(tmp_path / "store", keep=2)
    with pytest.raises(FileNotFoundError, match="no current index version"):
        store.current()
    made = []
    for i in range(4):
        v = build_index(emb[: 40 + i], docids[: 40 + i], store.new_version_dir("flat"), encoder=S.encoder())
        store.publish(v)
        made.append(v.version_id)
        assert store.current().version_id == v.version_id
        assert (store.root / "CURRENT").read_text() == v.version_id + "\n"
    assert [v.version_id for v in store.versions()] == made[-2:]  # keep=2, oldest removed
    assert store.current().load().doc_count == 43
    with pytest.raises(ValueError, match="not a version of"):
        store.publish(build_index(emb, docids, tmp_path / "elsewhere", encoder=S.encoder()))

    # half-written folders: of a dead process, of a live one, one without a manifest
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (store.versions_dir / f".x.tmp-{dead_pid}").mkdir()
    (store.versions_dir / f".x.tmp-{dead_pid}" / "index.faiss").write_bytes(b"partial")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (store.versions_dir / f".y.tmp-{live.pid}").mkdir()
        (store.versions_dir / "20000101T000000Z-broken").mkdir()
        assert len(store.half_written()) == 3
        removed = {p.name for p in store.cleanup()}
        assert removed == {f".x.tmp-{dead_pid}", "20000101T000000Z-broken"}
        assert [p.name for p in store.half_written()] == [f".y.tmp-{live.pid}"]  # its writer still runs
    finally:
        live.kill()
        live.wait()
    store.cleanup()


@pytest.mark.parametrize("bad", ["../../etc", "/etc", "..", "versions/../..", "a/b", "a\\b", ".x.tmp-1", "v1\nv2", "outside"])
def test_current_pointing_outside_the_store_is_refused(tmp_path, bad):
    """CURRENT is one folder name inside versions/: a path, a hidden or half-written folder,
    or a version folder that is a link out of the store is an IndexFormatError naming CURRENT."""
    docids, emb, _ = S.adi_encoded()
    store = IndexStore(tmp_path / "store")
    good = store.publish(build_index(emb[:10], docids[:10], store.new_version_dir("flat"), encoder=S.encoder()))
    elsewhere = build_index(emb[:10], docids[:10], tmp_path / "elsewhere" / "v", encoder=S.encoder())
    if bad == "outside":  # a link inside versions/ that leads to a complete version elsewhere
        (store.versions_dir / bad).symlink_to(elsewhere.path)
    (store.root / "CURRENT").write_text(bad + "\n")
    with pytest.raises(IndexFormatError, match=r"store/CURRENT: names .*(not a version folder name|link leading outside)"):
        store.current()
    (store.root / "CURRENT").write_text(good.version_id + "\n")
    assert store.current().version_id == good.version_id
    assert store.half_written() == []
    DenseSearcher(tmp_path / "store", S.encoder()).search("computer indexing", 3)  # store root works too


def test_hnsw_tombstones_are_never_returned(tmp_path):
    from retrieval_distill.index.build import apply_changes, corpus_fingerprint

    docids, emb, _ = S.adi_encoded()
    v1 = build_index(emb, docids, tmp_path / "v1", factory="HNSW32", params={"efSearch": 128}, encoder=S.encoder())
    s1 = DenseSearcher(v1, S.encoder())
    query = S.adi().queries["1"]
    top = [h.docid for h in s1.search(query, 5)]
    keep = [d for d in docids if d not in top[:2]]
    v2 = apply_changes(v1, tmp_path / "v2", remove=top[:2], add_docids=[], add_embeddings=np.zeros((0, 384)),
                       add_hashes=np.zeros(0, dtype=np.uint64), corpus_fingerprint_=corpus_fingerprint(keep, np.ones(len(keep), np.uint64)))
    m = v2.manifest
    assert (m.ntotal, m.doc_count, m.tombstones) == (82, 80, 2)  # HNSW keeps the vectors
    assert sorted(v2.tombstones.tolist()) == sorted(docids.index(d) for d in top[:2])
    hits = DenseSearcher(v2, S.encoder()).search(query, 80)
    assert [h.docid for h in hits][:3] == top[2:5] and len(hits) == 80
    assert not set(top[:2]) & {h.docid for h in hits}


def test_sharded_layout_gives_same_topk_as_one_index(tmp_path, flat):
    docids, emb, _ = S.adi_encoded()
    parts = docid_ranges(docids, 3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(82)) and [len(p) for p in parts] == [28, 27, 27]
    first_last = [(docids[p[0]], docids[p[-1]]) for p in parts]
    assert first_last[0][0] == min(docids) and first_last[0][1] < first_last[1][0]  # ranges by docid string order
    out = build_sharded(emb, docids, tmp_path / "sharded", 3, factory="Flat", encoder=S.encoder(), texts=S.adi().doc_texts())
    meta = json.loads((out / "shards.json").read_text())
    assert [s["docs"] for s in meta["shards"]] == [28, 27, 27]
    sharded = ShardedSearcher(out, S.encoder())
    single = DenseSearcher(flat, S.encoder())
    a = sharded.batch_search(S.adi().queries, k=10)
    b = single.batch_search(S.adi().queries, k=10)
    for qid in S.adi().queries:
        assert [h.docid for h in a[qid]] == [h.docid for h in b[qid]]
        np.testing.assert_allclose([h.score for h in a[qid]], [h.score for h in b[qid]], atol=1e-5)
    with pytest.raises(IndexFormatError, match="shards.json: missing"):
        ShardedSearcher(tmp_path, S.encoder())


def test_publish_refuses_a_broken_version(tmp_path):
    docids, emb, _ = S.adi_encoded()
    store = IndexStore(tmp_path / "s")
    good = store.publish(build_index(emb, docids, store.new_version_dir(), encoder=S.encoder()))
    bad = build_index(emb, docids, store.new_version_dir(), encoder=S.encoder())
    m = json.loads((bad.path / "manifest.json").read_text())
    m["doc_count"] = 81
    (bad.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="82 docids, the manifest says 81"):
        store.publish(IndexVersion(bad.path))
    assert store.current_id() == good.version_id
    assert os.path.exists(bad.path)  # not published, left for inspection
