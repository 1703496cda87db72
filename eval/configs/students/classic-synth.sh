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
#   TEACHER=colbert bash eval/configs/students/classic-synth.sh cranfield 300   (teacher = the fitted
#   ColBERT over all-mpnet-base-v2 tokens, fitted on SciFact train qrels by
#   `KINDS=fit bash eval/configs/teachers/scifact-colbert.sh all-mpnet-base-v2` (COLBERT_SPEC names its
#   teacher.json): a teacher trained on another corpus's judgements, as GPL uses an MS MARCO
#   cross-encoder; no Cranfield judgement is used. Its MaxSim margins are put on the student's
#   scale by the ratio of the init's per-query score spread to the teacher's (median over the
#   synthetic queries' candidate lists). The teacher's own figure on the real queries reranks
#   BM25 top-100 ∪ init top-100, reusing the synthetic job's document token states (doc_states).
#   work/students/cranfield-synth-300-colbert/)
#   SEED=14 ...   (the student's training seed; the synthetic queries keep seed 13; folder suffix -s14)
#   POSITIVE=teacher ...   (drop each synthetic query's source document from its list and train on
#   the teacher's top-scored remaining candidate as the positive: the query was copied from the
#   source, so "find the source" teaches copying; the teacher's preferences among the other
#   documents are ordinary relevance judgements: rd queries teacher-positives. Folder suffix -tpos)
#   POSITIVE=teacher bash eval/configs/students/classic-synth.sh cranfield 600   (the recipe that beats
#   the init on Cranfield's real queries: 1,783 queries from 600 documents, 112 steps, about 55 min of
#   training; nDCG@10 0.3952 vs 0.3817, p = 0.028: eval/reports/students.md, session 10)
set -euo pipefail
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
C=${1:-cranfield}; MAXDOCS=${2:-300}; EPOCHS=${EPOCHS:-1}; KINDS=${KINDS:-title,sentence,keywords}
TEACHER=${TEACHER:-bm25+minilm}; SEED=${SEED:-13}; POSITIVE=${POSITIVE:-source}
case $POSITIVE in source|teacher) ;; *) echo "POSITIVE must be source or teacher, got $POSITIVE" >&2; exit 2;; esac
case $TEACHER in bm25+minilm|mpnet|colbert) ;; *) echo "TEACHER must be bm25+minilm, mpnet or colbert, got $TEACHER" >&2; exit 2;; esac
COLBERT_SPEC=${COLBERT_SPEC:-work/teachers/scifact/colbert-all-mpnet-base-v2-fit/teacher.json}
D=../shared/data/classic/$C
W=work/students/$C-synth-$MAXDOCS$([ $KINDS = title,sentence,keywords ] || echo "-${KINDS//,/-}")
W=$W$([ $TEACHER = bm25+minilm ] || echo "-$TEACHER")$([ $SEED = 13 ] || echo "-s$SEED")$([ $POSITIVE = source ] || echo "-tpos")
mkdir -p $W
# "qid docid" lines on stdin -> a candidates file (TREC run format, each pair once)
to_cands() { sort -u | awk '{print $1, "Q0", $2, NR, 0, "cands"}'; }
[ -f $W/synth/queries.jsonl ] || rd queries synth classic/$C $W/synth --max-docs $MAXDOCS --seed 13 --kinds $KINDS
[ -d $W/bm25 ] || rd bm25 index $D $W/bm25
[ -f $W/init-index/CURRENT ] || rd index build --model all-MiniLM-L6-v2 --dataset $D --split test --out $W/init-index
# candidates of the synthetic queries: BM25 top-20 and MiniLM top-20, plus the source document
if [ ! -f $W/cands.trec ]; then
  rd eval run $W/synth $W/bm25.synth.trec --split train --searcher bm25 --index $W/bm25 --k 20
  rd eval run $W/synth $W/init.synth.trec --split train --searcher dense --index $W/init-index --k 20
  { awk '{print $1, $3}' $W/bm25.synth.trec $W/init.synth.trec; awk 'NR>1{print $1, $2}' $W/synth/qrels/train.tsv; } \
    | to_cands > $W/cands.trec
fi
if [ $TEACHER = mpnet ]; then
  [ -f $W/mpnet-index/CURRENT ] || rd index build --model all-mpnet-base-v2 --dataset $D --split test --out $W/mpnet-index --side teacher
  cat > $W/teacher.json <<JSON
{"kind": "bi_encoder", "name": "mpnet", "model": "all-mpnet-base-v2",
 "options": {"embeddings": "$(ls -d $W/mpnet-index/encodings/* | head -1)"}}
JSON
  T=mpnet; TSCALE=1.0    # cosine teacher, cosine student: margins already on one scale
  RUNS="init student mpnet"; TEACHER_RUN=mpnet-teacher=$W/mpnet.test.trec   # exhaustive mpnet search
  rd teacher score -t $W/teacher.json --candidates $W/cands.trec --dataset $W/synth --split train -o $W/scores --no-progress
elif [ $TEACHER = colbert ]; then
  [ -f $COLBERT_SPEC ] || { echo "$COLBERT_SPEC: no fitted ColBERT teacher (see the header)" >&2; exit 2; }
  # one parse of the spec: its display name (the score files' teacher) on stdout, and the spec
  # for the real queries, which reuses the synthetic job's document token pass (doc_states)
  T=$(python - $COLBERT_SPEC $W <<'PY'
import sys
from retrieval_distill.teachers.base import parse_spec
from retrieval_distill.utils import write_json_atomic
spec = parse_spec(sys.argv[1])
real = spec.model_dump()
real["options"]["doc_states"] = sys.argv[2] + "/scores"
write_json_atomic(sys.argv[2] + "/teacher-real.json", real)
print(spec.display_name())
PY
)
  # the init's own cosines over the same lists, for the scale only
  rd teacher score -t "{\"kind\": \"bi_encoder\", \"name\": \"init\", \"model\": \"all-MiniLM-L6-v2\", \"options\": {\"embeddings\": \"$(ls -d $W/init-index/encodings/* | head -1)\"}}" \
    --candidates $W/cands.trec --dataset $W/synth --split train -o $W/init-scores --no-progress
  rd teacher score -t $COLBERT_SPEC --candidates $W/cands.trec --dataset $W/synth --split train -o $W/scores --no-progress
  TSCALE=$(python - $W <<'PY'
import sys
from retrieval_distill.teachers.scoring import read_scores
w = sys.argv[1]
spread = lambda f: read_scores(f).groupby("qid")["score"].std().median()
print(f"{spread(w + '/init-scores') / spread(w + '/scores'):.4f}")
PY
)
  echo "teacher_scale $TSCALE (init's median per-query score std / the teacher's)"
  # the teacher's own reranking of the real queries' BM25 top-100 ∪ init top-100
  [ -f $W/init.test.trec ] || rd eval run $D $W/init.test.trec --split test --searcher dense --index $W/init-index --k 100 --tag init
  [ -f $W/bm25.test.trec ] || rd eval run $D $W/bm25.test.trec --split test --searcher bm25 --index $W/bm25 --k 100 --tag bm25
  awk '{print $1, $3}' $W/bm25.test.trec $W/init.test.trec | to_cands > $W/real-cands.trec
  rd teacher score -t $W/teacher-real.json --candidates $W/real-cands.trec --dataset $D --split test -o $W/teacher-real --no-progress
  rd teacher evaluate $W/teacher-real --dataset $D --split test --run $W/colbert.test.trec
  RUNS="init student"; TEACHER_RUN=colbert-teacher=$W/colbert.test.trec
else
  cat > $W/teacher.json <<JSON
{"kind": "ensemble", "name": "ens", "normalization": "zscore", "weights": [0.5, 0.5],
 "members": [{"kind": "bm25", "name": "bm25", "options": {"index": "$W/bm25"}},
             {"kind": "bi_encoder", "name": "minilm", "model": "all-MiniLM-L6-v2",
              "options": {"embeddings": "$(ls -d $W/init-index/encodings/* | head -1)"}}]}
JSON
  T=ens; TSCALE=0.1      # z-scores (std 1) mapped onto cosine-sized margins
  RUNS="init student"; TEACHER_RUN=
  rd teacher score -t $W/teacher.json --candidates $W/cands.trec --dataset $W/synth --split train -o $W/scores --no-progress
fi
SYNTH=$W/synth; CANDS=$W/cands.trec
if [ $POSITIVE = teacher ]; then
  SYNTH=$W/synth-tpos; CANDS=$W/synth-tpos/candidates.trec
  # always rerun (a few seconds, atomic writes): a guard on its output would keep stale
  # positives after the teacher is rescored
  rd queries teacher-positives $W/synth $SYNTH --candidates $W/cands.trec --scores $W/scores
fi
cat > $W/student.yaml <<YAML
collection: $SYNTH
split: train
candidates: $CANDS
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
for R in $RUNS; do
  [ -f $W/$R.test.trec ] || rd eval run $D $W/$R.test.trec --split test --searcher dense --index $W/$R-index --k 100 --tag $R
done
rd eval run $D $W/bm25.test.trec --split test --searcher bm25 --index $W/bm25 --k 100 --tag bm25
rd eval compare --qrels $D --split test --baseline init init=$W/init.test.trec bm25=$W/bm25.test.trec \
  $TEACHER_RUN student=$W/student.test.trec \
  --metrics ndcg@10,mrr@10,recall@100 --out-md $W/report.md --out-json $W/report.json
cat $W/report.md
