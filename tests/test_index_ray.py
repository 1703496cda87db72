"""Ray Data encoding backend: same shard files (byte for byte) as the local backend, same resume rules."""

from __future__ import annotations

import json

import pytest

import index_support as S
from retrieval_distill.index.build import encode_corpus
from retrieval_distill.utils import sha256_file

ray = pytest.importorskip("ray", reason="the Ray backend needs the 'scale' extra")


@pytest.fixture(scope="module")
def ray_local():
    try:
        ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False)
    except Exception as e:  # a local Ray node needs a few free seconds of CPU to start (GCS, raylet)
        pytest.skip(f"a local Ray node could not start here: {str(e).splitlines()[0]}")
    yield
    ray.shutdown()


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
