#!/bin/bash
# SciFact rows of eval/reports/teachers.md: every teacher reranks the quick pipeline's candidates
# (BM25 top-100 ∪ MiniLM top-100; dev = 120 queries carved from train, test = 300 queries).
# Needs `make demo` (work/scifact-quick) and the mpnet document encoding of the asymmetric index:
#   rd index build --model all-mpnet-base-v2 --dataset beir/scifact --split test --out work/asym/mpnet-flat \
#       --side teacher --max-length 256 --batch-size 16
#   bash eval/configs/teachers/scifact-leaderboard.sh
set -euo pipefail
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=work/teachers/scifact; Q=work/scifact-quick
mkdir -p $W
python -c "import json; print('\n'.join(json.load(open('$Q/splits.json'))['dev']))" > $W/dev.qids
MPNET="{\"kind\":\"bi_encoder\",\"name\":\"mpnet\",\"model\":\"all-mpnet-base-v2\",\"options\":{\"max_length\":256,\"embeddings\":\"work/asym/mpnet-flat/encodings/$(ls work/asym/mpnet-flat/encodings | head -1)\"}}"
MINILM="{\"kind\":\"bi_encoder\",\"name\":\"minilm\",\"model\":\"all-MiniLM-L6-v2\",\"options\":{\"embeddings\":\"$Q/embeddings/init\"}}"
BM25="{\"kind\":\"bm25\",\"name\":\"bm25\",\"options\":{\"index\":\"$Q/bm25-index\"}}"
ev() { rd teacher evaluate "$1" --dataset beir/scifact/$2 ${3:+--qids $3}; }
# all-mpnet-base-v2 bi-encoder (documents from the index build's encoding: no second document pass)
for S in dev test; do
  SPLIT=$([ $S = dev ] && echo train || echo test)
  rd teacher score -t "$MPNET" --candidates $Q/candidates/$S.trec --dataset beir/scifact/$SPLIT -o $W/mpnet.$S --no-progress
done
ev $W/mpnet.dev train $W/dev.qids; ev $W/mpnet.test test
# three-member z-score ensemble, weights chosen on dev (grid 0..1 step 0.25)
ENS="{\"kind\":\"ensemble\",\"name\":\"ens3\",\"normalization\":\"zscore\",\"members\":[$BM25,$MINILM,$MPNET]}"
[ -f $W/ens3.json ] || rd teacher fit-weights -t "$ENS" --dataset beir/scifact/train --candidates $Q/candidates/dev.trec --qids $W/dev.qids -o $W/ens3.json
for S in dev test; do
  SPLIT=$([ $S = dev ] && echo train || echo test)
  rd teacher score -t $W/ens3.json --candidates $Q/candidates/$S.trec --dataset beir/scifact/$SPLIT -o $W/ens3.$S --no-progress
done
ev $W/ens3.dev train $W/dev.qids; ev $W/ens3.test test
