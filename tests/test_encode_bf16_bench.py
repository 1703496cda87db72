"""eval/bench/encode_bf16.py on ADI with all-MiniLM-L6-v2 (bf16 forced, so it runs on any CPU):
the cosines and top-10 agreement it reports are real comparisons of the two passes. Times are
printed by the benchmark, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from script_support import load_script

PROJECT = Path(__file__).resolve().parents[1]
ADI = PROJECT.parent / "shared" / "data" / "classic" / "adi"


def test_bench_compares_the_bf16_and_fp32_passes(tmp_path):
    mod = load_script("eval/bench/encode_bf16.py")
    out = mod.main(["--model", "all-MiniLM-L6-v2", "--dataset", str(ADI), "--n", "24", "--rounds", "1", "--force",
                    "--json", str(tmp_path / "b.json")])
    assert out["bf16_ran"] and out["passages"] == 24 and out["queries"] == 35
    assert 0.99 <= out["min_cosine"] <= out["mean_cosine"] < 1.0  # close to fp32, not the same pass
    assert 0.5 < out["top10_overlap"] <= 1.0 and 0.0 <= out["top10_identical_share"] <= 1.0
    assert out["speedup_bf16_vs_fp32"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["min_cosine"] == out["min_cosine"]
    assert np.isfinite(out["fp32_docs_per_s"])
