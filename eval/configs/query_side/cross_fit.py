"""Write the folds, fold configs and teacher specs of the session-24 SciFact rows of
eval/reports/query_side.md: a teacher built from the same-budget supervised baseline itself.

The train queries of `make demo` (its candidate lists: train minus the 120 dev queries) are
shuffled with ``--seed`` and cut into ``--folds`` contiguous folds. Fold ``i``'s student is the
baseline's recipe (query-side corpus InfoNCE, ``scifact-quick`` settings) trained on every
fold but ``i``, with ``--epochs`` epochs and its epoch kept on dev. Written under ``--out``:

* ``fold{i}.trained.qids``: the queries student ``i`` trains on (its ``trained_qids``);
* ``fold{i}.exclude.qids``: dev plus fold ``i`` (its ``exclude_qids_file``);
* ``fold{i}.yaml``: its ``rd student train`` config, output ``OUT/models/fold{i}``;
* ``teacher.json``: the z-score ensemble of BM25 and the bi-encoder teacher whose query
  encoders are the fold students, each scoring only the queries it did not train on
  (``cross_fit``); weights left to ``rd teacher fit-weights``;
* ``born-again.json``: the same ensemble with the full baseline (trained on every train
  query) as the query encoder: the teacher that has seen each train query's qrels;
* ``student.yaml`` / ``born-again.student.yaml``: `make demo`'s student (corpus InfoNCE +
  listwise KL, 12 epochs, lr 2e-4, seed 13, best dev epoch) on that teacher's score folder
  ``OUT/scores`` / ``OUT/born-again.scores``, output ``OUT/models/student`` / ``.../born-again``.

    python eval/configs/query_side/cross_fit.py --folds 2 --epochs 12 --out work/s24/cf2
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import yaml

from retrieval_distill.data.formats import iter_trec_run, read_qids


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="work/scifact-quick", help="the make-demo work folder (candidates, splits, embeddings)")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.folds < 2:
        ap.error("--folds must be >= 2")
    work, out = Path(a.work), Path(a.out)
    for need in (work / "candidates" / "train.trec", work / "splits" / "dev.qids"):
        if not need.is_file():
            raise SystemExit(f"{need}: not found (is --work {work} a make-demo work folder?)")
    # qids files are read as everywhere else (first column, BOM stripped): a dev line "qid note"
    # read whole would never match a train qid, and the overlap check would pass it
    train = sorted({qid for _, qid, *_ in iter_trec_run(work / "candidates" / "train.trec")})
    dev = read_qids(work / "splits" / "dev.qids")
    if set(dev) & set(train):
        raise SystemExit(f"{work}: dev queries among the train candidate lists (e.g. {sorted(set(dev) & set(train))[0]!r})")
    if len(train) < a.folds:
        raise SystemExit(f"{work}: {len(train)} train queries cannot fill --folds {a.folds} (a fold would hold out nothing)")
    out.mkdir(parents=True, exist_ok=True)
    random.Random(a.seed).shuffle(train)
    n = len(train)
    folds = [set(train[i * n // a.folds:(i + 1) * n // a.folds]) for i in range(a.folds)]
    lines = lambda qs: "".join(q + "\n" for q in qs)  # noqa: E731
    members = []
    infonce = {"name": "corpus_infonce", "options": {"temperature": 0.05}}

    def job(exclude: Path, output: Path, epochs: int, losses: list, **teacher) -> str:
        return yaml.safe_dump({
            "mode": "query_side", "collection": "beir/scifact", "split": "train", "exclude_qids_file": str(exclude),
            "output": str(output), **teacher, "query_side": {"documents": str(work / "embeddings" / "init")},
            "train": {"init": "all-MiniLM-L6-v2", "losses": losses, "epochs": epochs, "batch_size": 32, "lr": 2.0e-4,
                      "max_seq_length": 256, "seed": 13, "save_steps": 1000},
            "dev": {"collection": "beir/scifact", "split": "train", "qids_file": str(work / "splits" / "dev.qids"),
                    "metrics": ["ndcg@10", "mrr@10", "recall@100"], "each_epoch": True, "keep": "best"},
        }, sort_keys=False)

    for i, held in enumerate(folds):
        trained = sorted(q for q in train if q not in held)
        (out / f"fold{i}.trained.qids").write_text(lines(trained))
        (out / f"fold{i}.exclude.qids").write_text(lines(dev + sorted(held)))
        (out / f"fold{i}.yaml").write_text(job(out / f"fold{i}.exclude.qids", out / "models" / f"fold{i}", a.epochs, [infonce]))
        members.append({"query_model": str(out / "models" / f"fold{i}"), "trained_qids": str(out / f"fold{i}.trained.qids")})
    bm25 = {"kind": "bm25", "name": "bm25", "options": {"index": str(work / "bm25-index"), "k1": 0.9, "b": 0.4}}

    def ensemble(name, options):
        dense = {"kind": "bi_encoder", "name": name, "model": "all-MiniLM-L6-v2",
                 "options": {"embeddings": str(work / "embeddings" / "init"), **options}}
        return {"kind": "ensemble", "name": f"bm25+{name}", "normalization": "zscore", "members": [bm25, dense]}

    (out / "teacher.json").write_text(json.dumps(ensemble(f"baseline-cf{a.folds}", {"cross_fit": members}), indent=1) + "\n")
    (out / "born-again.json").write_text(
        json.dumps(ensemble("baseline", {"query_model": str(work / "models" / "baseline")}), indent=1) + "\n")
    kl = {"name": "listwise_kl", "options": {"teacher_temperature": 1.0, "student_temperature": 0.05}}
    for name, teacher, scores in (("student", f"bm25+baseline-cf{a.folds}", "scores"), ("born-again", "bm25+baseline", "born-again.scores")):
        (out / f"{name}.yaml" if name == "student" else out / "born-again.student.yaml").write_text(
            job(work / "splits" / "dev.qids", out / "models" / name, 12, [infonce, kl], teacher=teacher, scores=str(out / scores)))
    print(f"{out}: {a.folds} folds of {[len(f) for f in folds]} of {len(train)} train queries (dev {len(dev)} excluded)")


if __name__ == "__main__":
    main()
