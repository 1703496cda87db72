"""Ray Data encoding backend: same shard files (byte for byte) as the local backend, same resume rules."""

from __future__ import annotations

import json

import pytest

import index_support as S
from retrieval_distill.index.build import encode_corpus
from retrieval_distill.utils import sha256_file

ray = pytest.importorskip("ray", reason="the Ray backend needs the 'scale' extra")


def _jvm_handlers():
    """(handler address, flags) of each signal HotSpot handles, with the JVM started first
    (the suite's BM25 tests start it in this process anyway)."""
    from retrieval_distill.scale.ray_local import jvm_running, signal_handlers
    from retrieval_distill.search.jvm import ensure_jvm

    ensure_jvm()
    import pyserini.search.lucene  # noqa: F401 - starts the JVM with Anserini's classpath

    assert jvm_running()
    return {s: (sa.handler, sa.flags) for s, sa in signal_handlers().items()}


@pytest.fixture(scope="module")
def ray_local():
    from retrieval_distill.scale.ray_local import init_local

    before = _jvm_handlers()
    try:
        init_local(num_cpus=2, log_to_driver=False, include_dashboard=False)
    except Exception as e:  # a local Ray node needs a few free seconds of CPU to start (GCS, raylet)
        pytest.skip(f"a local Ray node could not start here: {str(e).splitlines()[0]}")
    yield before
    from retrieval_distill.scale.ray_local import shutdown_local

    shutdown_local()  # ray.shutdown alone leaves SIGSEGV/SIGFPE/SIGILL at SIG_DFL
    assert _jvm_handlers() == before, "ray.shutdown left the JVM's signal handlers replaced"


@pytest.mark.slow
def test_ray_start_keeps_the_jvm_signal_handlers(ray_local, tmp_path):
    """ray.init replaces SIGSEGV & co. with Abseil's and faulthandler's handlers, after which
    the JVM's next recoverable fault kills the process (a 'Segmentation fault' of this suite
    in a BM25 test after a Ray test). init_local puts the JVM's handlers back; a task run
    afterwards does not replace them again; BM25 still searches."""
    from retrieval_distill.search.bm25 import BM25Searcher, build_bm25_index

    assert _jvm_handlers() == ray_local
    assert ray.get(ray.remote(lambda: 1 + 1).remote()) == 2
    assert _jvm_handlers() == ray_local
    hits = BM25Searcher(build_bm25_index(S.adi(), tmp_path / "bm25")).search("computer programs for indexing", k=3)
    assert len(hits) == 3


@pytest.mark.slow
def test_ray_backend_writes_the_same_shards_and_resumes(tmp_path, ray_local):
    docids = list(S.adi().corpus)[:20]
    corpus = (docids, S.adi().doc_texts(docids))
    enc = S.encoder()
    ids_l, emb_l = encode_corpus(enc, corpus, tmp_path / "local", shard_size=8, show_progress=False)
    ids_r, emb_r = encode_corpus(enc, corpus, tmp_path / "ray", shard_size=8, backend="ray", show_progress=False)
    assert ids_r == ids_l and emb_r.shape == (20, 384)
    names = [f"emb-{i:05d}.npy" for i in range(3)]
    assert [sha256_file(tmp_path / "ray" / n) for n in names] == [sha256_file(tmp_path / "local" / n) for n in names]
    state = json.loads((tmp_path / "ray" / "encoding.json").read_text())
    assert state["complete"] and sorted(state["shards"]) == names

    # a lost shard is re-encoded by Ray, the others are kept as they are
    kept = (tmp_path / "ray" / names[0]).stat().st_mtime_ns
    (tmp_path / "ray" / names[1]).unlink()
    _, emb_r2 = encode_corpus(enc, corpus, tmp_path / "ray", shard_size=8, backend="ray", show_progress=False)
    assert (tmp_path / "ray" / names[0]).stat().st_mtime_ns == kept
    assert sha256_file(tmp_path / "ray" / names[1]) == sha256_file(tmp_path / "local" / names[1])
    assert (emb_r2 == emb_l).all()
