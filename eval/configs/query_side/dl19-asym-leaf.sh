#!/bin/bash
# Issue 21 (second done-means) on the TREC-DL 2019 pool: asymmetric query-side students from
# synthetic queries only (eval/configs/query_side/dl19-asym-leaf.yaml has the design, declared
# before the runs). Every step is skipped when its output exists, so a killed run resumes.
#   bash eval/configs/query_side/dl19-asym-leaf.sh
# Cost on 2 AVX2 cores: the mpnet encoding of the pool is most of it (about 80 min at 6 passages/s;
# fp32, since this CPU has no native bf16); the MiniLM index about 15 min; each student about 14 min (249 steps at 3.3 s on one core).
set -euo pipefail
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
DL=../shared/data/msmarco/trec-dl-subset
W=work/dl19-asym
C=eval/configs/query_side
SPLIT=dl19.only-passages-in-corpus
mkdir -p $W/runs
# documents: mpnet (the asymmetric pair's side) and MiniLM (the symmetric init, the figure to beat)
[ -f work/indexes/dl19-mpnet/CURRENT ] || rd index build --model all-mpnet-base-v2 --dataset $DL --out work/indexes/dl19-mpnet --side teacher --dtype bf16
[ -f work/indexes/dl19-minilm/CURRENT ] || rd index build --model all-MiniLM-L6-v2 --dataset $DL --out work/indexes/dl19-minilm
# 7,940 synthetic sentence + keyword queries from 4,000 sampled passages
[ -f $W/synth/queries.jsonl ] || rd queries synth $DL $W/synth --kinds sentence,keywords --max-docs 4000 --seed 13
# the three arms (same queries, batches, steps, seed, map init); the first one encodes the
# training queries with mpnet into $W/synth.mpnet-queries.npz, the others read it
for arm in leaf corpus-kl infonce; do
  [ -f $W/students/$arm/training_card.json ] || rd student train $C/dl19-asym-$arm.yaml
done
# diagnostic: the ridge-fitted map alone (the arms' common start; one step at learning rate 0)
if [ ! -f $W/students/ridge/training_card.json ]; then
  sed -e 's#students/leaf#students/ridge#; s#projection_lr: 1.0e-4#projection_lr: 1.0e-12#; s#  lr: 1.0e-4#  lr: 0.0#; s#epochs: 1$#epochs: 0.004#' \
      $C/dl19-asym-leaf.yaml > $W/ridge.yaml
  rd student train $W/ridge.yaml
fi
run() { [ -f $W/runs/$1.dl19.trec ] || rd eval run $DL $W/runs/$1.dl19.trec --split $SPLIT --searcher dense --k 100 "${@:2}"; }
run init --index work/indexes/dl19-minilm
run mpnet --index work/indexes/dl19-mpnet
for arm in ridge leaf corpus-kl infonce; do run $arm --index work/indexes/dl19-mpnet --query-encoder $W/students/$arm; done
R=$W/runs
rd eval compare init=$R/init.dl19.trec mpnet=$R/mpnet.dl19.trec ridge=$R/ridge.dl19.trec infonce=$R/infonce.dl19.trec leaf=$R/leaf.dl19.trec \
    corpus-kl=$R/corpus-kl.dl19.trec --qrels $DL --split $SPLIT --baseline init --out-md $W/vs-init.md --out-json $W/vs-init.json
rd eval compare infonce=$R/infonce.dl19.trec leaf=$R/leaf.dl19.trec corpus-kl=$R/corpus-kl.dl19.trec \
    --qrels $DL --split $SPLIT --baseline infonce --out-md $W/vs-baseline.md --out-json $W/vs-baseline.json
# how close each query tower gets to mpnet's own query vectors, on the DL19 queries (no qrels read)
python $C/alignment.py --documents work/indexes/dl19-mpnet --queries $DL/queries.dl19.jsonl \
    $W/students/ridge $W/students/leaf $W/students/corpus-kl $W/students/infonce | tee $W/alignment.txt
