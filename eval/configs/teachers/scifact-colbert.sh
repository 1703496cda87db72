#!/bin/bash
# ColBERT (MaxSim) rows of eval/reports/teachers.md on SciFact: zero-shot MaxSim over
# all-MiniLM-L6-v2 token embeddings vs the same encoder with a fitted 128-d projection
# (rd teacher fit-colbert: train queries minus the dev qids, BM25 ∪ MiniLM hard negatives),
# both reranking the quick pipeline's candidates (the same lists as every other SciFact row).
# Needs `make demo` (work/scifact-quick) and work/teachers/scifact/dev.qids (scifact-leaderboard.sh).
#   bash eval/configs/teachers/scifact-colbert.sh [MODEL]      (default all-MiniLM-L6-v2)
#   SPLITS=test bash eval/configs/teachers/scifact-colbert.sh  (score only the test lists)
#   KINDS=fit ONEPASS=1 bash eval/configs/teachers/scifact-colbert.sh all-mpnet-base-v2  (only the fitted
#   teacher; ONEPASS=1 scores the dev and test lists in ONE job over the whole SciFact folder (their
#   qids are disjoint, the corpus is shared), so the document token pass, the expensive part with
#   all-mpnet-base-v2, runs once instead of twice; the figures are the same per query)
set -euo pipefail
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
M=${1:-all-MiniLM-L6-v2}; N=$(basename $M)
W=work/teachers/scifact; Q=work/scifact-quick
[ -f $W/colbert-$N-fit/teacher.json ] || rd teacher fit-colbert --model $M --dataset beir/scifact/train \
    --candidates $Q/candidates/train.trec --exclude-qids $W/dev.qids -o $W/colbert-$N-fit --dim 128 --epochs 10
for T in ${KINDS:-zero fit}; do
  S=$([ $T = zero ] && echo "{\"kind\":\"colbert\",\"name\":\"maxsim-$N\",\"model\":\"$M\"}" || echo $W/colbert-$N-fit/teacher.json)
  if [ "${ONEPASS:-0}" = 1 ]; then
    [ -f $W/devtest.trec ] || { cat $Q/candidates/dev.trec $Q/candidates/test.trec > $W/devtest.trec.tmp \
        && mv $W/devtest.trec.tmp $W/devtest.trec; }
    rd teacher score -t "$S" --candidates $W/devtest.trec \
        --dataset ../shared/data/beir/scifact -o $W/maxsim-$N-$T.devtest --no-progress
    rd teacher evaluate $W/maxsim-$N-$T.devtest --dataset beir/scifact/train --qids $W/dev.qids
    rd teacher evaluate $W/maxsim-$N-$T.devtest --dataset beir/scifact/test
    continue
  fi
  for SP in ${SPLITS:-dev test}; do
    SPLIT=$([ $SP = dev ] && echo train || echo test)
    rd teacher score -t "$S" --candidates $Q/candidates/$SP.trec \
        --dataset beir/scifact/$SPLIT -o $W/maxsim-$N-$T.$SP --no-progress
  done
  [ -f $W/maxsim-$N-$T.dev/manifest.json ] && rd teacher evaluate $W/maxsim-$N-$T.dev --dataset beir/scifact/train --qids $W/dev.qids
  rd teacher evaluate $W/maxsim-$N-$T.test --dataset beir/scifact/test
done
