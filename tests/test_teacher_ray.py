"""The Ray Data backend writes byte-identical shards to the local backend (local Ray, 2 CPUs,
one actor)."""

import json

import pytest

ray = pytest.importorskip("ray")

from retrieval_distill.teachers.scoring import read_scores, score_candidates  # noqa: E402


@pytest.mark.slow
def test_ray_backend_is_byte_identical(adi, adi_bm25_run, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    spec = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}
    kw = dict(corpus_ids=adi.corpus, queries_per_shard=10, progress=False)
    local = score_candidates(spec, adi_bm25_run[1], adi.queries, adi.doc_text, tmp_path / "local", **kw)
    # the ray run reuses nothing from the local one (own folder, own document pass)
    remote = score_candidates(spec, adi_bm25_run[1], adi.queries, adi.doc_text, tmp_path / "ray", backend="ray", **kw)
    assert remote["complete"] and remote["last_run"]["backend"] == "ray" and remote["last_run"]["new_pairs"] == 350
    assert remote["completed_shards"] == local["completed_shards"]  # same SHA-256 per shard
    for p in sorted((tmp_path / "local").glob("part-*.parquet")):
        assert p.read_bytes() == (tmp_path / "ray" / p.name).read_bytes()
    assert len(read_scores(tmp_path / "ray")) == 350
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["teacher_fingerprint"] == local["teacher_fingerprint"]
    assert not ray.is_initialized()  # the backend shut down the Ray it started
