"""ColBERT teacher document token pass: fp32 against ``dtype: bf16`` on real SciFact passages.

The expensive part of a ColBERT (MaxSim) teacher over all-mpnet-base-v2 is the document
token pass (about 53 min for SciFact's 5,183 abstracts in fp32 here). This benchmark encodes
the same ``n`` real passages (the first ``n`` corpus documents) with the same teacher in fp32
and in bf16 (``torch.autocast``), in one process, alternating rounds and keeping each side's
best, and prints the speed ratio, the CPU's bf16 support (``/proc/cpuinfo`` flags), and how
far the bf16 MaxSim scores of the dataset's first queries against those passages are from
fp32 (max |diff| / std and Spearman: the numbers the teacher's own speed check gates on).
On a CPU without AVX-512-BF16 or AMX, autocast emulates bf16 and is usually slower: measure
before setting the option. No figure is asserted.

    python eval/bench/colbert_bf16.py --model all-mpnet-base-v2 --dataset beir/scifact/test --n 64 \\
        --json eval/reports/bench/colbert_bf16.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all-mpnet-base-v2")
    ap.add_argument("--dataset", default="beir/scifact/test")
    ap.add_argument("--n", type=int, default=64, help="passages encoded per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--doc-maxlen", type=int, default=256, help="tokens")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)

    import numpy as np
    from scipy.stats import spearmanr

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.models.encoder import cpu_bf16_flags
    from retrieval_distill.teachers import build_teacher

    ds = load_collection(a.dataset)
    docids = list(ds.corpus)[: a.n]
    texts = [ds.doc_text(d) for d in docids]
    qtexts = list(ds.queries.values())[:4]
    spec = {"kind": "colbert", "model": a.model, "options": {"doc_maxlen": a.doc_maxlen, "cache_documents": False}}
    fp32 = build_teacher(spec)
    bf16 = build_teacher({**spec, "options": {**spec["options"], "dtype": "bf16"}})
    bf16.model = fp32.model  # one copy of the weights: only the autocast differs
    # a teacher falls back to fp32 where the CPU has no native bf16; this bench measures the
    # emulated path there too, so it forces autocast on
    bf16.dtype, bf16.fast = "bf16", True
    fp32.encode_document_state(texts[:4])  # warm-up
    bf16.encode_document_state(texts[:4])
    best = {"fp32": float("inf"), "bf16": float("inf")}
    for _ in range(a.rounds):
        for name, t in (("fp32", fp32), ("bf16", bf16)):
            t0 = time.perf_counter()
            t.encode_document_state(texts)
            best[name] = min(best[name], time.perf_counter() - t0)
    q = [x for x in qtexts for _ in texts]
    p = [x for _ in qtexts for x in texts]
    ref, fast = fp32._score_fresh(q, p), bf16._score_fresh(q, p)
    diff = float(np.abs(ref - fast).max())
    out = {
        "model": a.model,
        "passages": len(texts),
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "fp32_docs_per_s": len(texts) / best["fp32"],
        "bf16_docs_per_s": len(texts) / best["bf16"],
        "speedup_bf16_vs_fp32": best["fp32"] / best["bf16"],
        "score_pairs": len(q),
        "max_abs_diff_over_std": diff / float(ref.std()),
        "spearman": float(spearmanr(ref, fast).statistic),
    }
    for k, v in out.items():
        print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
