"""Corpus encoding for an index (`rd index build --dtype bf16`): fp32 against bf16 on real passages.

Encodes the same ``n`` real passages (the dataset's first ``n`` corpus documents) with one
sentence-transformers model through :class:`retrieval_distill.models.encoder.Encoder` in fp32
and in bf16 (``torch.autocast``; one copy of the weights), in one process, alternating rounds
and keeping each side's best time. Prints the speed ratio (the baseline is the fp32 pass of
the same run), the CPU's native-bf16 flags, the cosines between each document's bf16 and fp32
vector (what the encoder's own check gates on, floor 0.99), and whether retrieval changes:
for the dataset's queries (fp32 query vectors), the mean overlap of the top-10 over the ``n``
passages and the share of queries whose top-10 is identical. On a CPU without AVX-512-BF16
or AMX the encoder refuses bf16 (fp32 fallback); ``--force`` measures the emulated path
anyway. No figure is asserted.

    python eval/bench/encode_bf16.py --model all-mpnet-base-v2 --dataset beir/scifact/test --n 128 \\
        --json eval/reports/bench/encode_bf16.json
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
    ap.add_argument("--n", type=int, default=128, help="passages encoded per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--force", action="store_true", help="run bf16 even where the CPU only emulates it")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)

    import numpy as np

    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.models.encoder import Encoder, cpu_bf16_flags

    ds = load_collection(a.dataset)
    docids = list(ds.corpus)[: a.n]
    texts = [ds.doc_text(d) for d in docids]
    queries = list(ds.queries.values())
    fp32 = Encoder(a.model, batch_size=a.batch_size, show_progress=False)
    bf16 = Encoder(a.model, batch_size=a.batch_size, show_progress=False, dtype="bf16", force_bf16=a.force)
    if bf16.dtype != "bf16":
        print("this CPU has no native bf16 (avx512_bf16 / amx_bf16): the encoder falls back to fp32; --force measures the emulated path")
    bf16.doc_model = bf16.query_model = fp32.doc_model  # one copy of the weights: only the autocast differs
    fp32.encode_documents(texts[:4])  # warm-up (and bf16's fp32 check, on these 4 documents)
    bf16.encode_documents(texts[:4])
    best = {"fp32": float("inf"), "bf16": float("inf")}
    emb = {}
    for _ in range(a.rounds):
        for name, enc in (("fp32", fp32), ("bf16", bf16)):
            t0 = time.perf_counter()
            emb[name] = enc.encode_documents(texts)
            best[name] = min(best[name], time.perf_counter() - t0)
    cos = np.sum(emb["fp32"] * emb["bf16"], axis=1)
    q = fp32.encode_queries(queries)
    k = min(10, len(texts))
    top = {name: np.argsort(-(q @ e.T), axis=1)[:, :k] for name, e in emb.items()}
    overlap = [len(set(x) & set(y)) / k for x, y in zip(top["fp32"], top["bf16"])]
    out = {
        "model": a.model,
        "passages": len(texts),
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "bf16_ran": bf16.dtype == "bf16",
        "fp32_docs_per_s": len(texts) / best["fp32"],
        "bf16_docs_per_s": len(texts) / best["bf16"],
        "speedup_bf16_vs_fp32": best["fp32"] / best["bf16"],
        "min_cosine": float(cos.min()),
        "mean_cosine": float(cos.mean()),
        "queries": len(queries),
        "top10_overlap": float(np.mean(overlap)),
        "top10_identical_share": float(np.mean([list(x) == list(y) for x, y in zip(top["fp32"], top["bf16"])])),
    }
    for key, v in out.items():
        print(f"{key:>24}: {v:.6g}" if isinstance(v, float) else f"{key:>24}: {v}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
