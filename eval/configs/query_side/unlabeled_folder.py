"""Build the training folder and teacher candidates of scifact-colbert-mpnet-unlabeled.yaml.

* ``work/synth/scifact-plus-sent1500``: a BEIR folder with SciFact's corpus (a symlink, never a
  copy), its queries plus the synthetic ones of ``rd queries synth --kinds sentence``, and a
  train qrels file holding SciFact's train qrels plus each synthetic query judged **grade 0** on
  its source document: a judged query without a positive, which ``query_side.unlabeled`` keeps
  for the teacher terms only. ``--grade 1`` judges it grade 1 instead (the source document is its
  positive: the labelled synthetic-query recipe of scifact-colbert-mpnet-synth.yaml, where the
  InfoNCE term trains on it and the teacher's KL on its other candidates).
* ``work/synth/train-plus-sent1500.trec``: the pipeline's train candidate lists (its 689 train
  queries) plus each synthetic query's dense top 50 without its source document (the source
  is a copy of the query's words: the teacher would make it the answer, and real queries do
  not reward copying).

    python eval/configs/query_side/unlabeled_folder.py [--synth work/synth/scifact-sent1500]
        [--dense work/synth/sent1500.dense50.trec] [--train-candidates work/scifact-colbert-mpnet/candidates/train.trec]
        [--grade 0|1 --out FOLDER]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from retrieval_distill.data.formats import iter_qrels, iter_trec_run, read_jsonl


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scifact", default="../shared/data/beir/scifact")
    ap.add_argument("--synth", default="work/synth/scifact-sent1500")
    ap.add_argument("--dense", default="work/synth/sent1500.dense50.trec")
    ap.add_argument("--train-candidates", default="work/scifact-colbert-mpnet/candidates/train.trec")
    ap.add_argument("--out", default="work/synth/scifact-plus-sent1500")
    ap.add_argument("--candidates-out", default="work/synth/train-plus-sent1500.trec")
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--grade", type=int, choices=(0, 1), default=0, help="judgement of each synthetic query on its source")
    a = ap.parse_args(argv)
    S, out = Path(a.scifact).resolve(), Path(a.out)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    if not (out / "corpus.jsonl").exists():
        os.symlink(S / "corpus.jsonl", out / "corpus.jsonl")
    syn = [q for _, q in read_jsonl(Path(a.synth) / "queries.jsonl")]
    src = {q: d for _, q, d, _ in iter_qrels(Path(a.synth) / "qrels" / "train.tsv")}  # synthetic query -> its source
    with open(out / "queries.jsonl", "w") as f:
        for ln in open(S / "queries.jsonl"):
            f.write(ln if ln.endswith("\n") else ln + "\n")
        for q in syn:
            f.write(json.dumps({"_id": q["_id"], "text": q["text"]}) + "\n")
    with open(out / "qrels" / "train.tsv", "w") as f:
        f.write(open(S / "qrels" / "train.tsv").read().rstrip("\n") + "\n")
        for q in syn:
            f.write(f"{q['_id']}\t{src[q['_id']]}\t{a.grade}\n")
    lines = open(a.train_candidates).read().splitlines()
    n: dict[str, int] = {}
    for _, q, d, _, s, _ in iter_trec_run(a.dense):
        if d == src[q] or n.get(q, 0) >= a.depth:
            continue
        n[q] = n.get(q, 0) + 1
        lines.append(f"{q} Q0 {d} {n[q]} {s} dense")
    Path(a.candidates_out).write_text("\n".join(lines) + "\n")
    print(f"{out}: {len(syn)} synthetic queries; {a.candidates_out}: {len(lines)} lines, {len(n)} synthetic queries")


if __name__ == "__main__":
    main()
