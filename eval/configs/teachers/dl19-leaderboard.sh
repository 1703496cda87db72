#!/bin/bash
# TREC-DL 2019 pool rows of eval/reports/teachers.md: each teacher reranks the published BM25
# run's top 20 (43 queries, 860 pairs) of ../shared/data/msmarco/trec-dl-subset, evaluated with
# the qrels restricted to passages in the pool.      bash eval/configs/teachers/dl19-leaderboard.sh
set -euo pipefail
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=work/teachers
DL=../shared/data/msmarco/trec-dl-subset
mkdir -p $W
awk '$4<=20' $DL/runs/BM25.dl19.trec > $W/dl19.bm25.top20.trec
[ -d $W/dl-bm25 ] || rd bm25 index $DL $W/dl-bm25
# the SciFact-fitted ColBERT over mpnet tokens (eval/configs/teachers/scifact-colbert.sh), when it exists:
# a zero-transfer row (fitted on SciFact train qrels, never on MS MARCO)
FIT=work/teachers/scifact/colbert-all-mpnet-base-v2-fit/teacher.json
EXTRA=(); [ -f $FIT ] && EXTRA=("maxsim-mpnet-scifact-fit|$FIT")
ONLY=${ONLY:-}   # e.g. ONLY=maxsim-mpnet-scifact-fit: just that row
for T in "bm25|{\"kind\":\"bm25\",\"options\":{\"index\":\"$W/dl-bm25\"}}" \
         "minilm|bi_encoder:all-MiniLM-L6-v2" \
         "maxsim-minilm|{\"kind\":\"colbert\",\"model\":\"all-MiniLM-L6-v2\"}" \
         "ens-bm25-minilm|{\"kind\":\"ensemble\",\"members\":[{\"kind\":\"bm25\",\"options\":{\"index\":\"$W/dl-bm25\"}},{\"kind\":\"bi_encoder\",\"model\":\"all-MiniLM-L6-v2\"}]}" \
         "mpnet|bi_encoder:all-mpnet-base-v2" \
         "maxsim-mpnet|{\"kind\":\"colbert\",\"model\":\"all-mpnet-base-v2\"}" "${EXTRA[@]}"; do
  N=${T%%|*}; S=${T#*|}
  [ -z "$ONLY" ] || [ "$ONLY" = $N ] || continue
  rd teacher score -t "$S" --candidates $W/dl19.bm25.top20.trec --dataset $DL -o $W/dl19.$N --no-progress
  rd teacher evaluate $W/dl19.$N --dataset $DL --qrels-file qrels/dl19.only-passages-in-corpus.tsv
done
