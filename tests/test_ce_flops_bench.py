"""eval/bench/ce_flops_ceiling.py: its FLOP count against a hand computation for
all-MiniLM-L6-v2 (6 layers, hidden 384, FFN 1536), on a tiny batch. Times are printed by the
benchmark, never asserted here."""

from __future__ import annotations

import json

import pytest

from script_support import load_script


def test_flops_per_pair_match_a_hand_count(tmp_path):
    mod = load_script("eval/bench/ce_flops_ceiling.py")
    out = mod.main(["--batch", "2", "--tokens", "16", "--rounds", "1", "--json", str(tmp_path / "f.json")])
    L, d, ff, layers = 16, 384, 1536, 6
    # per layer and token: Q, K, V, O (4 d^2) + FFN up and down (2 d ff), 2 FLOPs per multiply-add
    linear = layers * 2 * L * (4 * d * d + 2 * d * ff)
    attention = layers * 4 * L * L * d  # Q K^T and A V
    assert out["gflop_per_pair"] == pytest.approx((linear + attention) / 1e9, abs=1e-3)
    assert out["attention_gflop_per_pair"] == pytest.approx(attention / 1e9, abs=1e-3)
    # torch's own counter sees at least the linear layers (plus the pooler), not the CPU SDPA kernel
    assert out["flop_counter_gflop_per_pair"] >= linear / 1e9 - 1e-3
    assert json.loads((tmp_path / "f.json").read_text())["gflop_per_pair"] == out["gflop_per_pair"]
    assert out["int8_linear_speedup"] > 0 and 0 < out["linear_share_of_fp32_time"] <= 1
