"""Paired comparison of teachers' rerankings from their score folders (ranx ``compare``,
Fisher randomisation), as quoted in eval/reports/teachers.md:

    python eval/configs/teachers/compare_scores.py beir/scifact/test \
        ens3=work/teachers/scifact/ens3.test zero=work/teachers/scifact/maxsim-all-MiniLM-L6-v2-zero.test \
        fit=work/teachers/scifact/maxsim-all-MiniLM-L6-v2-fit.test ens2=work/scifact-quick/teacher/scores/test
"""

import sys

from ranx import Qrels, Run, compare

from retrieval_distill.data.collections import load_collection
from retrieval_distill.teachers.scoring import scores_dict

coll = load_collection(sys.argv[1])
runs = []
for arg in sys.argv[2:]:
    name, _, path = arg.partition("=")
    runs.append(Run(scores_dict(path), name=name))
print(compare(Qrels(coll.qrels), runs, metrics=["ndcg@10", "mrr@10"], stat_test="fisher", max_p=0.01))
