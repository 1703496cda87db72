"""Benchmark FAISS index types: build time, bytes/vector, recall@10 vs flat, nDCG@10, latency.

Every figure is measured against the flat (exact) top-k of the same queries, and the
latencies of all indexes of one run are taken the same way, so ratios are comparable even
on a shared, loaded machine.

Usage::

    # one process: encode (cached/resumed under --encodings), build, measure
    python eval/bench/index_bench.py --dataset beir/scifact/test --out eval/reports/bench/scifact.json

    # two phases: build (normal priority, resumable: finished index folders are kept under
    # --index-dir and skipped), then measure under eval/bench/quiet.sh (loads the folders;
    # --factories picks the rows, each row is merged into --out)
    python eval/bench/index_bench.py --phase build --dataset ../shared/data/classic/vaswani \
        --index-dir work/bench/idx/vaswani --factories "Flat;HNSW32;SQ8;IVF64,PQ48"
    eval/bench/quiet.sh python eval/bench/index_bench.py --phase measure --dataset ../shared/data/classic/vaswani \
        --index-dir work/bench/idx/vaswani --factories "Flat;HNSW32" --out eval/reports/bench/vaswani.json

    # synthetic clustered unit vectors (scale); see clustered_vectors()
    python eval/bench/index_bench.py --phase build --synthetic 1000000 --dim 384 --queries 500 \
        --index-dir work/bench/idx/synthetic-1m --factories "Flat;SQ8;IVF1024,PQ48"

    # plot recall vs latency from the JSON files
    python eval/bench/index_bench.py --plot eval/reports/bench/*.json --png eval/reports/indexes_recall_latency.png

A factory string may end in ``@l2`` to build with the L2 metric (needed by FAISS's IVFPQR,
``IVF{n},PQ{m}+{m2}``, which has no inner-product search); on L2-normalised vectors L2 and
inner product rank documents identically, so recall and nDCG are comparable.

Per index: ``build_s`` (train + add, FAISS threads = all cores; ``build_cpu_s`` is the
process CPU time of the same build, which is what a loaded machine does not distort),
``bytes_per_vector`` (the serialized ``index.faiss`` divided by the vector count: codes,
ids, inverted-list overhead, codebooks, centroids, graph links, everything FAISS stores),
and for IVF indexes ``code_bytes`` (bytes per vector of one inverted-list entry: code +
8-byte id, i.e. the per-vector cost on a corpus large enough to make the fixed part
vanish). Per search setting: ``recall@10`` (overlap of the top-10 with the exact flat
top-10), ``ndcg@10`` (ranx, judged queries only; real datasets), latency p50/p99 in ms for
one query (1 FAISS thread) and for a batch of 64 queries (``--batch-threads``), through
:class:`~retrieval_distill.search.dense.DenseSearcher` (so docid mapping is included, query
encoding is not). Search-time sweeps (``efSearch``, ``nprobe``, ``k_factor`` for re-ranking
indexes) give the recall/latency curve.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from retrieval_distill.index.build import apply_search_params, build_index  # noqa: E402
from retrieval_distill.search.dense import DenseSearcher  # noqa: E402

DATA_FILE = "bench-data.npz"  # queries, qids and the exact top-k, shared by build and measure
BUILDS_FILE = "builds.json"  # CPU seconds and load average of each build


def clustered_vectors(n: int, dim: int, n_queries: int, seed: int = 0, clusters: int = 1000,
                      rank: int = 64, noise: float = 0.6, iso: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors from a Gaussian mixture shaped like sentence embeddings.

    Each vector is ``centre[c] + (z * s) @ B + e`` normalised, with ``c`` uniform over
    ``clusters`` random unit centres, ``B`` a random orthonormal ``(rank, dim)`` basis
    shared by all clusters, ``z ~ N(0, I_rank)``, ``s_i ∝ (i+1)^-1/2`` scaled so the
    structured noise has norm about ``noise``, and a small isotropic part ``e`` of norm
    about ``iso``. Real embeddings have a few dominant directions and low intrinsic
    dimension; isotropic Gaussian noise in 384 dimensions (every neighbour nearly
    equidistant) is a worst case no ANN index is built for. Queries are drawn the same way
    (same centres and basis), independently of the indexed vectors.

    Returns:
        ``(docs float32 (n, dim), queries float32 (n_queries, dim))``, rows L2-normalised.
    """
    rng = np.random.default_rng(seed)
    rank = min(rank, dim)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)  # (rank, dim), orthonormal rows
    s = (np.arange(1, rank + 1, dtype=np.float32) ** -0.5)
    s *= noise / np.sqrt(np.sum(s**2))

    def draw(m):
        out = np.empty((m, dim), dtype=np.float32)
        for a in range(0, m, 100_000):
            b = min(m, a + 100_000)
            c = rng.integers(0, clusters, b - a)
            z = rng.standard_normal((b - a, rank), dtype=np.float32) * s
            x = centres[c] + z @ basis + rng.standard_normal((b - a, dim), dtype=np.float32) * (iso / np.sqrt(dim))
            out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries)


def latency(searcher: DenseSearcher, q: np.ndarray, k: int, batch: int, reps: int, threads: int) -> tuple[float, float]:
    """p50 and p99 of wall-clock ms per call (one call = ``batch`` queries)."""
    searcher.threads = threads
    searcher.search_vectors(q[:batch], k)  # warm-up (page in the index, allocate)
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


def slug(factory: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_")


def split_factory(spec: str) -> tuple[str, str]:
    """``"IVF64,PQ48+32@l2"`` -> ``("IVF64,PQ48+32", "l2")``; no suffix -> inner product."""
    spec = spec.strip()
    if spec.endswith("@l2"):
        return spec[:-3], "l2"
    return spec, "ip"


def load_data(args) -> dict:
    """Document vectors (``emb``, only when ``need_docs``), query vectors and metadata."""
    if args.synthetic:
        emb, q = clustered_vectors(args.synthetic, args.dim, args.queries, seed=args.seed, clusters=args.clusters)
        return {"name": f"synthetic-{args.synthetic}x{args.dim}", "emb": emb, "docids": [f"s{i}" for i in range(len(emb))],
                "q": q, "qids": [f"q{i}" for i in range(len(q))], "qrels": {},
                "extra": {"encoder": {"name": "synthetic", "fingerprint": "0" * 16}}, "encoder": None}
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.index.build import corpus_fingerprint, corpus_items, doc_hashes, encode_corpus, encoder_refs
    from retrieval_distill.models.encoder import Encoder

    coll = load_collection(args.dataset, split=args.split)
    enc = Encoder(args.model, batch_size=64, show_progress=False)
    ids, texts, _ = corpus_items(coll)
    fp = corpus_fingerprint(ids, doc_hashes(ids, texts))
    cache = Path(args.encodings) / f"{encoder_refs(enc)[0].fingerprint[:8]}-{fp}"
    t0 = time.perf_counter()
    docids, emb = encode_corpus(enc, coll, cache, shard_size=1024)
    print(f"encodings: {cache} ({time.perf_counter() - t0:.1f} s)", flush=True)
    qids = coll.judged_qids()
    q = enc.encode_queries([coll.queries[x] for x in qids])
    return {"name": coll.name, "emb": emb, "docids": docids, "q": q, "qids": qids, "qrels": coll.qrels,
            "extra": {}, "encoder": enc}


def exact_topk(emb: np.ndarray, docids: list[str], q: np.ndarray, k: int) -> np.ndarray:
    """Docids (unicode array ``(nq, k)``) of the exact inner-product top-k."""
    import faiss

    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    _, labels = flat.search(q, k)
    return np.asarray(docids)[labels]


def build_phase(args, factories: list[str]) -> None:
    """Build every factory's version folder under ``--index-dir`` (skipping finished ones)."""
    import faiss

    root = Path(args.index_dir)
    root.mkdir(parents=True, exist_ok=True)
    d = load_data(args)
    emb = d["emb"]
    data_path = root / DATA_FILE
    if not data_path.exists():
        t0 = time.perf_counter()
        exact = exact_topk(emb, d["docids"], d["q"], args.k)
        tmp = root / (DATA_FILE + ".tmp.npz")
        np.savez(tmp, q=d["q"], qids=np.asarray(d["qids"]), exact=exact,
                 meta=np.asarray(json.dumps({"dataset": d["name"], "n": len(emb), "dim": emb.shape[1], "k": args.k})))
        os.replace(tmp, data_path)
        print(f"exact top-{args.k} of {len(d['q'])} queries: {time.perf_counter() - t0:.1f} s", flush=True)
    builds_path = root / BUILDS_FILE
    builds = json.loads(builds_path.read_text()) if builds_path.exists() else {}
    for spec in factories:
        factory, metric = split_factory(spec)
        vdir = root / slug(spec)
        if (vdir / "manifest.json").exists():
            print(f"  {spec}: built already ({vdir})", flush=True)
            continue
        params = {"efConstruction": args.ef_construction} if "HNSW" in factory else {}
        faiss.omp_set_num_threads(args.build_threads or os.cpu_count() or 1)
        kw = {"encoder": d["encoder"]} if d["encoder"] is not None else {"manifest_extra": d["extra"]}
        load0 = os.getloadavg()[0]
        c0 = time.process_time()
        v = build_index(emb, d["docids"], vdir, factory=factory, metric=metric, params=params, **kw)
        builds[spec] = {"build_s": v.manifest.build_seconds, "build_cpu_s": round(time.process_time() - c0, 2),
                        "build_threads": args.build_threads or os.cpu_count(), "load_avg_start": round(load0, 2),
                        "load_avg_end": round(os.getloadavg()[0], 2), "params": params, "metric": metric}
        builds_path.write_text(json.dumps(builds, indent=2) + "\n")
        print(f"  {spec}: built in {v.manifest.build_seconds:.1f} s wall, {builds[spec]['build_cpu_s']:.1f} s CPU "
              f"(load {load0:.1f} -> {os.getloadavg()[0]:.1f}), {(vdir / 'index.faiss').stat().st_size / len(emb):.1f} B/vec",
              flush=True)


def sweep_for(index, args) -> list[tuple[str | None, int | None]]:
    import faiss

    from retrieval_distill.index.build import unwrap

    inner = unwrap(index)
    top = faiss.downcast_index(index)
    settings: list[tuple[str | None, int | None]] = [(None, None)]
    if hasattr(inner, "hnsw"):
        settings += [("efSearch", x) for x in args.ef_search]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        settings += [("nprobe", x) for x in args.nprobe if x <= ivf.nlist]
    if hasattr(top, "k_factor") or hasattr(inner, "k_factor"):
        settings += [("k_factor", x) for x in args.k_factor]
    return settings


def set_param(index, name: str, value: int) -> None:
    import faiss

    from retrieval_distill.index.build import unwrap

    if name in ("efSearch", "nprobe"):
        apply_search_params(index, {name: value})
    elif name == "k_factor":  # IndexRefine / IndexIVFPQR: re-rank k_factor * k candidates with the finer codes
        for idx in (faiss.downcast_index(index), unwrap(index)):
            if hasattr(idx, "k_factor"):
                idx.k_factor = value
    else:
        raise ValueError(name)


def measure_phase(args, factories: list[str], d: dict | None = None, root: Path | None = None) -> dict:
    """Measure every factory's folder under ``root``; merge the rows into ``--out``."""
    import faiss

    root = Path(root or args.index_dir)
    z = np.load(root / DATA_FILE)
    meta = json.loads(str(z["meta"]))
    q, qids, exact = z["q"], [str(x) for x in z["qids"]], z["exact"]
    qrels = {}
    if not args.synthetic:
        from retrieval_distill.data.collections import load_collection

        qrels = load_collection(args.dataset, split=args.split).qrels
    ncpu = os.cpu_count() or 1
    out = Path(args.out) if args.out else None
    result = json.loads(out.read_text()) if out and out.exists() else {}
    if result.get("dataset") not in (None, meta["dataset"]):
        raise SystemExit(f"{out} holds {result['dataset']}, not {meta['dataset']}")
    result.update({"dataset": meta["dataset"], "n": meta["n"], "dim": meta["dim"], "queries": len(q), "cores": ncpu,
                   "k": args.k, "faiss": faiss.__version__})
    result.setdefault("indexes", [])
    builds = json.loads((root / BUILDS_FILE).read_text()) if (root / BUILDS_FILE).exists() else {}
    print(f"{meta['dataset']}: {meta['n']} vectors x {meta['dim']}, {len(q)} queries, {ncpu} cores, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    for spec in factories:
        vdir = root / slug(spec)
        s = DenseSearcher(vdir, encoder=None, check_encoder=False)
        size = (vdir / "index.faiss").stat().st_size
        n = s.version.doc_count
        row = {"factory": spec, "build_s": s.manifest.build_seconds, "bytes": size, "bytes_per_vector": size / n,
               **{k: v for k, v in builds.get(spec, {}).items() if k != "build_s"},
               "threads": {"single_query": 1, "batch64": args.batch_threads}, "load_avg_measure": os.getloadavg(),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ivf = faiss.try_extract_index_ivf(s.index)
        if ivf is not None:
            row["code_bytes"] = int(ivf.code_size) + 8
        row["settings"] = []
        for pname, pval in sweep_for(s.index, args):
            if pname is not None:
                set_param(s.index, pname, pval)
            s.threads = None
            _, top = s.search_vectors(q, args.k)
            rec = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(top, exact)]))
            p50_1, p99_1 = latency(s, q, args.k, 1, args.reps, threads=1)
            p50_64, p99_64 = latency(s, q, args.k, 64, args.batch_reps, threads=args.batch_threads)
            st = {"param": pname, "value": pval, "recall@10": rec, "ndcg@10": ndcg(s, qids, q, qrels),
                  "p50_ms_1": p50_1, "p99_ms_1": p99_1, "p50_ms_64": p50_64, "p99_ms_64": p99_64}
            row["settings"].append(st)
            print(f"  {spec:22s} {pname or '':8s} {pval if pval is not None else '':>4} recall@10 {rec:.4f} "
                  f"ndcg@10 {st['ndcg@10'] if st['ndcg@10'] is None else round(st['ndcg@10'], 4)} "
                  f"p50 {p50_1:.3f} ms (1q, 1 thr) / {p50_64:.2f} ms (64q, {args.batch_threads} thr); "
                  f"build {row['build_s']:.2f} s; {row['bytes_per_vector']:.1f} B/vec", flush=True)
        result["indexes"] = [r for r in result["indexes"] if r["factory"] != spec] + [row]
        if out:  # after every index, so a time-out keeps what was measured
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, out)
        del s
    return result


def plot(paths: list[str], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(Path(p).read_text()) for p in paths]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.4), squeeze=False)
    for ax, r in zip(axes[0], runs):
        flat = next((row for row in r["indexes"] if row["factory"].startswith("Flat")), None)
        for row in r["indexes"]:
            swept = [s for s in row["settings"] if s["param"]]
            pts = [(s["p50_ms_1"], s["recall@10"]) for s in sorted(swept, key=lambda s: s["value"])] or \
                [(s["p50_ms_1"], s["recall@10"]) for s in row["settings"]]  # joined in sweep order
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3, label=f"{row['factory']} ({row['bytes_per_vector']:.0f} B/vec)")
        if flat:
            f50 = flat["settings"][0]["p50_ms_1"]
            ax.axvline(f50 / 5, color="grey", ls=":", lw=1)
            ax.text(f50 / 5, 0.02, " flat/5", color="grey", fontsize=7, transform=ax.get_xaxis_transform())
        ax.axhline(0.99, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency, 1 query, 1 thread (ms)")
        ax.set_ylabel("recall@10 vs flat")
        ax.set_title(f"{r['dataset']} ({r['n']:,} x {r['dim']})", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--phase", choices=["all", "build", "measure"], default="all",
                    help="all: build into a temporary folder and measure in one process; build/measure: "
                         "split, with --index-dir (run measure under eval/bench/quiet.sh)")
    ap.add_argument("--index-dir", default=None, help="where built index folders are kept (build/measure phases)")
    ap.add_argument("--dataset", default="beir/scifact/test")
    ap.add_argument("--split", default=None)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--encodings", default="work/bench/encodings")
    ap.add_argument("--synthetic", type=int, default=0, help="N synthetic clustered unit vectors instead of a dataset")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000, help="synthetic queries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--factories", default="Flat;HNSW32;SQ8;IVF64,PQ48;IVF64,PQ64;IVF64,PQ96",
                    help="';'-separated FAISS factory strings (suffix @l2: L2 metric); with --phase all the first must be Flat")
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=_ints, default=_ints("16,32,64,128,256"))
    ap.add_argument("--nprobe", type=_ints, default=_ints("1,2,4,8,16,32,64"))
    ap.add_argument("--k-factor", type=_ints, default=_ints("1,2,4,8,16"))
    ap.add_argument("--build-threads", type=int, default=0, help="FAISS threads for builds (0: all cores)")
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
    factories = [f.strip() for f in args.factories.split(";") if f.strip()]
    if args.phase == "all":
        tmp = Path(tempfile.mkdtemp(prefix="rd-index-bench-"))
        args.index_dir = str(tmp)
        try:
            build_phase(args, factories)
            measure_phase(args, factories)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif not args.index_dir:
        raise SystemExit("--phase build/measure needs --index-dir")
    elif args.phase == "build":
        build_phase(args, factories)
    else:
        measure_phase(args, factories)
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
