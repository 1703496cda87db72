"""Why the Cranfield synthetic-query student does not beat its init (eval/reports/students.md):
how often BM25, the init and the teacher put the source document first on the synthetic
queries, and the teacher's fusion of BM25 + init on the real queries.

    python eval/configs/students/cranfield_synth_diagnose.py work/students/cranfield-synth-1400
"""

import sys

from ranx import Qrels, Run, evaluate, fuse

from retrieval_distill.data.collections import load_collection
from retrieval_distill.teachers.scoring import scores_dict

W = sys.argv[1]
synth = Qrels(load_collection(f"{W}/synth", split="train").qrels)
for name in ("init", "bm25"):
    print(name, "on synthetic queries", evaluate(synth, Run.from_file(f"{W}/{name}.synth.trec", kind="trec"), ["mrr@10", "recall@1"]))
print("teacher on synthetic queries", evaluate(synth, Run(scores_dict(f"{W}/scores")), ["mrr@10", "recall@1"]))
real = Qrels(load_collection("../shared/data/classic/cranfield", split="test").qrels)
runs = {n: Run.from_file(f"{W}/{n}.test.trec", kind="trec") for n in ("bm25", "init")}
fused = fuse([runs["bm25"], runs["init"]], norm="zmuv", method="wsum", params={"weights": [0.5, 0.5]})
print("z-score BM25 + init (equal weights) on real queries", evaluate(real, fused, ["ndcg@10", "mrr@10"]))
