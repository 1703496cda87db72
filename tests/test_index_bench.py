"""eval/bench/index_bench.py: build and measure phases on small synthetic vectors (no model)."""

from __future__ import annotations

import json

import numpy as np

from script_support import load_script


def _bench():
    return load_script("eval/bench/index_bench.py")


def test_clustered_vectors_are_unit_deterministic_and_clustered():
    b = _bench()
    docs, q = b.clustered_vectors(3000, 32, 50, seed=3, clusters=10, rank=8)
    docs2, q2 = b.clustered_vectors(3000, 32, 50, seed=3, clusters=10, rank=8)
    assert docs.shape == (3000, 32) and q.shape == (50, 32) and docs.dtype == np.float32
    np.testing.assert_array_equal(docs, docs2)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    # a query's nearest document is much closer than a random one (clusters, not noise)
    sims = q @ docs.T
    assert np.median(sims.max(axis=1)) > np.median(sims) + 0.3
    assert b.split_factory("IVF8,PQ8+4@l2") == ("IVF8,PQ8+4", "l2") and b.split_factory(" HNSW32 ") == ("HNSW32", "ip")
    assert b.slug("IVF16,PQ128x4fs") == "IVF16_PQ128x4fs"


def test_build_then_measure_phases(tmp_path, capsys):
    b = _bench()
    idx = tmp_path / "idx"
    out = tmp_path / "r.json"
    common = ["--synthetic", "2000", "--dim", "32", "--queries", "40", "--clusters", "20", "--index-dir", str(idx),
              "--ef-construction", "40", "--ef-search", "16,64", "--nprobe", "1,8", "--reps", "5", "--batch-reps", "2"]
    b.main(["--phase", "build", "--factories", "Flat;HNSW32;IVF8,PQ8x4", *common])
    builds = json.loads((idx / b.BUILDS_FILE).read_text())
    assert set(builds) == {"Flat", "HNSW32", "IVF8,PQ8x4"} and builds["HNSW32"]["params"] == {"efConstruction": 40}
    assert (idx / "IVF8_PQ8x4" / "manifest.json").exists()
    # a second build run skips the finished folders (resumable)
    b.main(["--phase", "build", "--factories", "Flat;HNSW32", *common])
    assert "HNSW32: built already" in capsys.readouterr().out

    b.main(["--phase", "measure", "--factories", "Flat;HNSW32", "--out", str(out), *common])
    b.main(["--phase", "measure", "--factories", "IVF8,PQ8x4", "--out", str(out), *common])
    r = json.loads(out.read_text())
    assert r["dataset"] == "synthetic-2000x32" and r["n"] == 2000 and r["queries"] == 40
    rows = {row["factory"]: row for row in r["indexes"]}
    assert list(rows) == ["Flat", "HNSW32", "IVF8,PQ8x4"]  # the second measure run merged its row
    flat = rows["Flat"]
    assert flat["settings"][0]["recall@10"] == 1.0 and flat["settings"][0]["ndcg@10"] is None
    assert abs(flat["bytes_per_vector"] - (32 * 4 + 8)) < 5  # 32 floats + an 8-byte id, plus a small header
    assert [(s["param"], s["value"]) for s in rows["HNSW32"]["settings"]] == [(None, None), ("efSearch", 16), ("efSearch", 64)]
    assert rows["HNSW32"]["settings"][-1]["recall@10"] >= 0.95
    ivf = rows["IVF8,PQ8x4"]
    assert ivf["code_bytes"] == 4 + 8  # 8 sub-quantisers x 4 bits + the id
    assert [s["value"] for s in ivf["settings"]] == [None, 1, 8]
    assert ivf["settings"][2]["recall@10"] >= ivf["settings"][1]["recall@10"]  # probing all lists never loses
    for row in r["indexes"]:
        for s in row["settings"]:
            assert s["p50_ms_1"] > 0 and s["p99_ms_1"] >= s["p50_ms_1"] and s["p50_ms_64"] > 0
    # the plot reads the same JSON
    png = tmp_path / "p.png"
    b.main(["--plot", str(out), "--png", str(png)])
    assert png.stat().st_size > 1000
