#!/bin/bash
# A classic corpus with NO judged training queries: synthetic queries -> BM25 + MiniLM candidates ->
# BM25+MiniLM z-score ensemble teacher -> margin-MSE + InfoNCE student -> evaluated on the corpus's
# REAL queries (never seen in training) against the student init.     eval/reports/students.md
#   EPOCHS=0.5 bash eval/configs/students/classic-synth.sh cranfield 1400   (all documents, half an
#   epoch over their ~4,150 synthetic queries = 131 steps; outputs in work/students/cranfield-synth-1400/)
#   bash eval/configs/students/classic-synth.sh adi 82   (ADI, all 82 documents, 246 queries, 16 steps: 8 min)
#   KINDS=ict bash eval/configs/students/classic-synth.sh cranfield 1400   (Inverse Cloze Task only:
#   a body sentence as the query, the document without it as the positive; work/students/cranfield-synth-1400-ict/)
#   TEACHER=mpnet bash eval/configs/students/classic-synth.sh cranfield 300   (teacher = all-mpnet-base-v2
#   alone, cosine, over an mpnet encoding of the corpus: no BM25 member, so the teacher does not reward
#   the lexical copying that synthetic queries invite; work/students/cranfield-synth-300-mpnet/)
#   SEED=14 ...   (the student's training seed; the synthetic queries keep seed 13; folder suffix -s14)
set -euo pipefail
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
C=${1:-cranfield}; MAXDOCS=${2:-300}; EPOCHS=${EPOCHS:-1}; KINDS=${KINDS:-title,sentence,keywords}
TEACHER=${TEACHER:-bm25+minilm}; SEED=${SEED:-13}
case $TEACHER in bm25+minilm|mpnet) ;; *) echo "TEACHER must be bm25+minilm or mpnet, got $TEACHER" >&2; exit 2;; esac
D=../shared/data/classic/$C
W=work/students/$C-synth-$MAXDOCS$([ $KINDS = title,sentence,keywords ] || echo "-${KINDS//,/-}")
W=$W$([ $TEACHER = bm25+minilm ] || echo "-$TEACHER")$([ $SEED = 13 ] || echo "-s$SEED")
mkdir -p $W
[ -f $W/synth/queries.jsonl ] || rd queries synth classic/$C $W/synth --max-docs $MAXDOCS --seed 13 --kinds $KINDS
[ -d $W/bm25 ] || rd bm25 index $D $W/bm25
[ -f $W/init-index/CURRENT ] || rd index build --model all-MiniLM-L6-v2 --dataset $D --split test --out $W/init-index
# candidates of the synthetic queries: BM25 top-20 and MiniLM top-20, plus the source document
if [ ! -f $W/cands.trec ]; then
  rd eval run $W/synth $W/bm25.synth.trec --split train --searcher bm25 --index $W/bm25 --k 20
  rd eval run $W/synth $W/init.synth.trec --split train --searcher dense --index $W/init-index --k 20
  { awk '{print $1, $3}' $W/bm25.synth.trec $W/init.synth.trec; awk 'NR>1{print $1, $2}' $W/synth/qrels/train.tsv; } \
    | sort -u | awk '{print $1, "Q0", $2, NR, 0, "cands"}' > $W/cands.trec
fi
if [ $TEACHER = mpnet ]; then
  [ -f $W/mpnet-index/CURRENT ] || rd index build --model all-mpnet-base-v2 --dataset $D --split test --out $W/mpnet-index --side teacher
  cat > $W/teacher.json <<JSON
{"kind": "bi_encoder", "name": "mpnet", "model": "all-mpnet-base-v2",
 "options": {"embeddings": "$(ls -d $W/mpnet-index/encodings/* | head -1)"}}
JSON
  T=mpnet; TSCALE=1.0    # cosine teacher, cosine student: margins already on one scale
else
  cat > $W/teacher.json <<JSON
{"kind": "ensemble", "name": "ens", "normalization": "zscore", "weights": [0.5, 0.5],
 "members": [{"kind": "bm25", "name": "bm25", "options": {"index": "$W/bm25"}},
             {"kind": "bi_encoder", "name": "minilm", "model": "all-MiniLM-L6-v2",
              "options": {"embeddings": "$(ls -d $W/init-index/encodings/* | head -1)"}}]}
JSON
  T=ens; TSCALE=0.1      # z-scores (std 1) mapped onto cosine-sized margins
fi
[ -f $W/scores/manifest.json ] || rd teacher score -t $W/teacher.json --candidates $W/cands.trec --dataset $W/synth --split train -o $W/scores --no-progress
cat > $W/student.yaml <<YAML
collection: $W/synth
split: train
candidates: $W/cands.trec
scores: $W/scores
teacher: $T
output: $W/student
train:
  init: all-MiniLM-L6-v2
  losses: [{name: margin_mse, options: {teacher_scale: $TSCALE}}, {name: infonce, weight: 0.1}]
  n_negatives: 3
  negative_depth: 20
  epochs: $EPOCHS
  batch_size: 16
  lr: 2.0e-5
  max_seq_length: 256
  seed: $SEED
YAML
[ -f $W/student/model.safetensors ] || rd student train $W/student.yaml
[ -f $W/student-index/CURRENT ] || rd index build --model $W/student --dataset $D --split test --out $W/student-index
RUNS="init student"; [ $TEACHER = mpnet ] && RUNS="$RUNS mpnet"
for R in $RUNS; do
  [ -f $W/$R.test.trec ] || rd eval run $D $W/$R.test.trec --split test --searcher dense --index $W/$R-index --k 100 --tag $R
done
rd eval run $D $W/bm25.test.trec --split test --searcher bm25 --index $W/bm25 --k 100 --tag bm25
rd eval compare --qrels $D --split test --baseline init init=$W/init.test.trec bm25=$W/bm25.test.trec \
  $([ $TEACHER = mpnet ] && echo mpnet-teacher=$W/mpnet.test.trec) student=$W/student.test.trec \
  --metrics ndcg@10,mrr@10,recall@100 --out-md $W/report.md --out-json $W/report.json
cat $W/report.md
