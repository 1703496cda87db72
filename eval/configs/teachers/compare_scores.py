"""Paired comparison of teachers' rerankings from their score folders (ranx ``compare``,
Fisher randomisation), as quoted in eval/reports/teachers.md:

    python eval/configs/teachers/compare_scores.py beir/scifact/test \
        ens3=work/teachers/scifact/ens3.test zero=work/teachers/scifact/maxsim-all-MiniLM-L6-v2-zero.test \
        fit=work/teachers/scifact/maxsim-all-MiniLM-L6-v2-fit.test ens2=work/scifact-quick/teacher/scores/test

Only the queries judged in the collection's qrels are compared, so a score folder that holds
more queries (``ONEPASS=1`` in scifact-colbert.sh scores dev and test lists in one folder) can
be compared on either split.
"""

import sys

from ranx import Qrels, Run, compare

from retrieval_distill.data.collections import load_collection
from retrieval_distill.teachers.scoring import scores_dict

coll = load_collection(sys.argv[1])
runs = []
for arg in sys.argv[2:]:
    name, _, path = arg.partition("=")
    scores = scores_dict(path)
    runs.append(Run({q: scores[q] for q in coll.qrels if q in scores}, name=name))
print(compare(Qrels(coll.qrels), runs, metrics=["ndcg@10", "mrr@10"], stat_test="fisher", max_p=0.01))
