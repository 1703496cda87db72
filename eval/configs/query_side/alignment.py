"""How close query encoders come to the document encoder's own query vectors.

For an asymmetric pair (documents by an embedding teacher, queries by a student aligned to its
space) the student's ceiling is the teacher ranking with its own query vectors. This prints,
for each student model folder, the cosine between its vector of each query and the document
encoder's vector of the same query (mean, median, min over the queries). No qrels are read.

    python eval/configs/query_side/alignment.py --documents work/indexes/dl19-mpnet \
        --queries ../shared/data/msmarco/trec-dl-subset/queries.dl19.jsonl work/dl19-asym/students/leaf
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("students", nargs="+", help="query encoder model folders")
    ap.add_argument("--documents", required=True, help="the frozen documents' index or encoding folder")
    ap.add_argument("--queries", required=True, help="queries.jsonl")
    args = ap.parse_args()

    from retrieval_distill.distill.query_side import document_encoder_queries, load_documents
    from retrieval_distill.models import load_sentence_transformer

    docs = load_documents(args.documents)
    with open(args.queries, encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh if line.strip()]
    target, _ = document_encoder_queries(docs, texts, show_progress=False)
    print(f"{len(texts)} queries; target: {docs.key.get('encoder')} ({docs.key.get('dim')}-d)")
    print("| query encoder | mean cosine | median | min |\n|---|---:|---:|---:|")
    for path in args.students:
        v = load_sentence_transformer(path).encode(texts, convert_to_numpy=True, normalize_embeddings=True)
        cos = (v * target).sum(1) / np.linalg.norm(target, axis=1)
        print(f"| {path} | {cos.mean():.4f} | {np.median(cos):.4f} | {cos.min():.4f} |")


if __name__ == "__main__":
    main()
