"""Benchmark FAISS index types: build time, bytes/vector, recall@10 vs flat, nDCG@10, latency.

Every figure is measured in one run against the flat (exact) index built in the same run,
so ratios are comparable even on a shared, loaded machine.

Usage::

    # real embeddings (all-MiniLM-L6-v2; encodings cached/resumed under --encodings)
    python eval/bench/index_bench.py --dataset beir/scifact/test --out eval/reports/bench/scifact.json
    python eval/bench/index_bench.py --dataset ../shared/data/classic/vaswani --out eval/reports/bench/vaswani.json
    # synthetic clustered unit vectors (scale)
    python eval/bench/index_bench.py --synthetic 1000000 --dim 64 --factories Flat,SQ8,IVF1024,PQ32 \
        --out eval/reports/bench/synthetic-1m.json
    # plot recall vs latency from the JSON files
    python eval/bench/index_bench.py --plot eval/reports/bench/*.json --png eval/reports/indexes_recall_latency.png

Per index: ``build_s`` (train + add, FAISS threads = all cores), ``bytes_per_vector`` (the
serialized ``index.faiss`` divided by the vector count, ids included), ``recall@10``
(overlap of the top-10 with the flat index's top-10), ``ndcg@10`` (ranx, judged queries
only; real datasets), latency p50/p99 in ms for one query (1 FAISS thread) and for a batch
of 64 queries (``--batch-threads``, default 1), through :class:`~retrieval_distill.search.dense.DenseSearcher`
(so docid mapping is included, query encoding is not). Search-time sweeps (``efSearch``,
``nprobe``) give the recall/latency curve.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from retrieval_distill.index.build import build_index, corpus_fingerprint, corpus_items, doc_hashes, encode_corpus  # noqa: E402
from retrieval_distill.search.dense import DenseSearcher  # noqa: E402

SWEEPS = {"HNSW": ("efSearch", [16, 32, 64, 128, 256]), "IVF": ("nprobe", [1, 2, 4, 8, 16, 32, 64])}


def clustered_vectors(n: int, dim: int, n_queries: int, seed: int = 0, clusters: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors drawn around ``clusters`` random centres (real embeddings are clustered;
    isotropic Gaussian vectors are a worst case no ANN index is built for). Queries come
    from the same distribution, not from the indexed set."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m):
        out = np.empty((m, dim), dtype=np.float32)
        for s in range(0, m, 100_000):
            e = min(m, s + 100_000)
            c = rng.integers(0, clusters, e - s)
            x = centres[c] + rng.standard_normal((e - s, dim), dtype=np.float32) * (0.6 / np.sqrt(dim))
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def latency(searcher: DenseSearcher, q: np.ndarray, k: int, batch: int, reps: int, threads: int) -> tuple[float, float]:
    """p50 and p99 of wall-clock ms per call (one call = ``batch`` queries)."""
    searcher.threads = threads
    times = []
    for i in range(reps):
        s = (i * batch) % max(1, len(q) - batch + 1)
        qq = q[s : s + batch]
        t0 = time.perf_counter()
        searcher.search_vectors(qq, k)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def ndcg(searcher: DenseSearcher, qids: list[str], q: np.ndarray, qrels: dict, k: int = 10) -> float | None:
    if not qrels:
        return None
    from ranx import Qrels, Run, evaluate

    searcher.threads = None
    scores, docids = searcher.search_vectors(q, 100)
    run = {qid: {str(d): float(s) for s, d in zip(sr, dr) if d} for qid, sr, dr in zip(qids, scores, docids)}
    judged = {qid: r for qid, r in qrels.items() if qid in run and any(g > 0 for g in r.values())}
    return float(evaluate(Qrels(judged), Run({q_: run[q_] for q_ in judged}), f"ndcg@{k}"))


def bench(args) -> dict:
    import faiss

    from retrieval_distill.models.encoder import Encoder

    ncpu = os.cpu_count() or 1
    qrels, qids = {}, []
    if args.synthetic:
        emb, q = clustered_vectors(args.synthetic, args.dim, args.queries, seed=args.seed)
        docids = [f"s{i}" for i in range(len(emb))]
        name = f"synthetic-{args.synthetic}x{args.dim}"
        extra = {"encoder": {"name": "synthetic", "fingerprint": "0" * 16}}
        enc_arg = None
    else:
        from retrieval_distill.data.collections import load_collection

        coll = load_collection(args.dataset, split=args.split)
        enc = Encoder(args.model, batch_size=64, show_progress=False)
        ids, texts, _ = corpus_items(coll)
        fp = corpus_fingerprint(ids, doc_hashes(ids, texts))
        from retrieval_distill.index.build import encoder_refs

        cache = Path(args.encodings) / f"{encoder_refs(enc)[0].fingerprint[:8]}-{fp}"
        t0 = time.perf_counter()
        docids, emb = encode_corpus(enc, coll, cache, shard_size=1024)
        print(f"encodings: {cache} ({time.perf_counter() - t0:.1f} s)", flush=True)
        qids = coll.judged_qids()
        q = enc.encode_queries([coll.queries[x] for x in qids])
        qrels = coll.qrels
        name = coll.name
        extra = {}
        enc_arg = enc
    n, dim = emb.shape
    print(f"{name}: {n} vectors x {dim}, {len(q)} queries, {ncpu} cores", flush=True)
    result = {"dataset": name, "n": n, "dim": dim, "queries": len(q), "cores": ncpu, "k": args.k,
              "threads": {"build": ncpu, "single_query": 1, "batch64": args.batch_threads},
              "load_avg": os.getloadavg(), "faiss": faiss.__version__, "indexes": []}
    tmp = Path(tempfile.mkdtemp(prefix="rd-index-bench-"))
    exact = None
    for factory in args.factories.split(";"):
        factory = factory.strip()
        params = {"efConstruction": args.ef_construction} if "HNSW" in factory else {}
        faiss.omp_set_num_threads(ncpu)
        kw = {"encoder": enc_arg} if not args.synthetic else {"manifest_extra": extra}
        v = build_index(emb, docids, tmp / factory.replace(",", "_"), factory=factory, params=params, **kw)
        size = (v.path / "index.faiss").stat().st_size
        s = DenseSearcher(v, encoder=None, check_encoder=False)
        row = {"factory": factory, "build_s": v.manifest.build_seconds, "bytes": size, "bytes_per_vector": size / n}
        kind = "HNSW" if "HNSW" in factory else "IVF" if "IVF" in factory else None
        settings = [(None, None)] + ([(SWEEPS[kind][0], x) for x in SWEEPS[kind][1]] if kind else [])
        row["settings"] = []
        for pname, pval in settings:
            if pname is not None:
                from retrieval_distill.index.build import apply_search_params

                if pname == "nprobe" and pval > faiss.extract_index_ivf(s.index).nlist:
                    continue
                apply_search_params(s.index, {pname: pval})
            s.threads = None
            _, top = s.search_vectors(q, args.k)
            if exact is None:
                exact = top  # the first factory must be Flat
            rec = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(top, exact)]))
            p50_1, p99_1 = latency(s, q, args.k, 1, args.reps, threads=1)
            p50_64, p99_64 = latency(s, q, args.k, 64, args.batch_reps, threads=args.batch_threads)
            st = {"param": pname, "value": pval, "recall@10": rec, "ndcg@10": ndcg(s, qids, q, qrels),
                  "p50_ms_1": p50_1, "p99_ms_1": p99_1, "p50_ms_64": p50_64, "p99_ms_64": p99_64}
            row["settings"].append(st)
            print(f"  {factory:16s} {pname or '':8s} {pval if pval is not None else '':>4} recall@10 {rec:.4f} "
                  f"ndcg@10 {st['ndcg@10'] if st['ndcg@10'] is None else round(st['ndcg@10'], 4)} "
                  f"p50 {p50_1:.3f} ms (1q, 1 thr) / {p50_64:.2f} ms (64q, {args.batch_threads} thr); "
                  f"build {row['build_s']:.2f} s; {row['bytes_per_vector']:.1f} B/vec", flush=True)
        result["indexes"].append(row)
        if args.out:  # after every index, so a time-out keeps what was measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        import shutil

        shutil.rmtree(v.path, ignore_errors=True)
    return result


def plot(paths: list[str], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False)
    for ax, r in zip(axes[0], runs):
        for row in r["indexes"]:
            pts = sorted((s["p50_ms_1"], s["recall@10"]) for s in row["settings"] if s["param"] or len(row["settings"]) == 1)
            if not pts:
                pts = [(s["p50_ms_1"], s["recall@10"]) for s in row["settings"]]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=row["factory"])
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency, 1 query, 1 thread (ms)")
        ax.set_ylabel("recall@10 vs flat")
        ax.set_title(f"{r['dataset']} ({r['n']:,} x {r['dim']})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="beir/scifact/test")
    ap.add_argument("--split", default=None)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--encodings", default="work/bench/encodings")
    ap.add_argument("--synthetic", type=int, default=0, help="N synthetic clustered unit vectors instead of a dataset")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factories", default="Flat;HNSW32;SQ8;IVF64,PQ48;IVF64,PQ64;IVF64,PQ96",
                    help="';'-separated FAISS factory strings; the first must be Flat")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--reps", type=int, default=200, help="single-query latency repetitions")
    ap.add_argument("--batch-reps", type=int, default=10, help="batch-of-64 latency repetitions")
    ap.add_argument("--batch-threads", type=int, default=1,
                    help="FAISS threads for batch-64 latency (1: on a shared, oversubscribed machine OpenMP "
                         "barriers make 2 threads slower than 1)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", nargs="*", default=None, help="JSON results to plot instead of benchmarking")
    ap.add_argument("--png", default="eval/reports/indexes_recall_latency.png")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.plot:
        plot(args.plot, args.png)
        return
    res = bench(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
