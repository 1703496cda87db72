#!/bin/bash
# Train and evaluate SciFact students for eval/reports/students.md, one config at a time.
# Needs the quick pipeline's outputs (make demo: work/scifact-quick/{candidates,teacher/scores}).
#   bash eval/configs/students/run.sh listwise pairwise infonce leaf-mpnet
# For each NAME: rd student train eval/configs/students/scifact-NAME.yaml, then a flat index of
# the SciFact corpus encoded by the student, then TREC runs (top 100) of the test queries and of
# the train queries (the dev qids are scored from the latter with work/students/dev.qrels.tsv).
set -euo pipefail
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=work/students
mkdir -p $W/runs
# dev qrels: the pipeline's dev qids (splits.json) with their train qrels; the qids alone in dev.qids
python - <<'PY'
import json
dev = set(json.load(open("work/scifact-quick/splits.json"))["dev"])
open("work/students/dev.qids", "w").write("".join(q + "\n" for q in sorted(dev)))  # for configs' dev.qids_file
with open("../shared/data/beir/scifact/qrels/train.tsv") as f, open("work/students/dev.qrels.tsv", "w") as out:
    for i, line in enumerate(f):
        if i == 0 or line.split("\t")[0] in dev:
            out.write(line)
PY
for NAME in "$@"; do
  echo "=== $NAME $(date -u +%H:%M:%S)"
  M=$W/scifact-$NAME
  [ -f $M/model.safetensors ] || rd student train eval/configs/students/scifact-$NAME.yaml
  [ -f $W/$NAME-index/CURRENT ] || rd index build --model $M --dataset beir/scifact --split test --out $W/$NAME-index --max-length 256 --batch-size 32
  for S in test train; do
    [ -f $W/runs/$NAME.$S.trec ] || rd eval run beir/scifact/$S $W/runs/$NAME.$S.trec --searcher dense --index $W/$NAME-index --k 100 --tag $NAME
  done
  echo "=== $NAME done $(date -u +%H:%M:%S)"
done
