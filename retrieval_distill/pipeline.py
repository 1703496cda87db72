"""``rd pipeline CONFIG``: the whole flow of DESIGN.md on one dataset.

Stages (each writes files under ``work_dir`` and a stamp ``stamps/<stage>.json`` holding a
fingerprint of its inputs; a stage whose stamp matches and whose outputs exist is skipped):

0. ``queries``    only when the training queries are synthetic (``queries.source``; by default
                  when the dataset has no judged train split, e.g. a folder with only
                  ``corpus.jsonl``): queries made from the documents, in ``queries/synth``
1. ``splits``     carve a fixed, seeded dev split out of the train queries
2. ``bm25``       Lucene index (Pyserini) and BM25 runs for train / dev / test
3. ``init``       corpus embeddings of the student init (cached) and its dense runs
4. ``candidates`` per query, the union of BM25 top-k and init top-k (TREC runs)
5. ``teacher``    fit steps first (a ColBERT member with ``projection: fit`` gets its
                  projection fitted on train minus dev); then each candidate teacher
                  (``teacher.candidates``, or the one inline) gets ensemble weights chosen on
                  dev and the best on dev is kept (``teacher/ensemble.json`` records all);
                  its scores of every candidate are written as the Parquet score file;
                  teacher runs (reranked candidates)
6. ``train``      the student, trained with the configured losses on the teacher's scores
                  (synthetic queries with ``queries.positive: teacher`` are relabelled first);
                  query-side students, and two-tower ones with ``student.keep: best``, keep
                  the trained epoch with the best dev nDCG@10
   ``baseline``   only with ``student.baseline``: the same-budget supervised baseline, the
                  train stage's job with only its teacher-free losses (same queries,
                  negatives, steps, seed, dev selection), and its dev/test runs
7. ``index``      student corpus embeddings and FAISS indexes (Flat, HNSW) with manifests
8. ``eval``       runs of every system on dev and test, metrics (ranx), significance of
                  student vs init (and vs the baseline), Markdown + JSON report (a dataset
                  without a test split, such as a corpus-only folder, is reported on dev only)

Every stage prints its wall time; the run ends with the metrics table.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from itertools import product
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval_distill.config import PipelineConfig, load_config
from retrieval_distill.data.collections import Collection, load_collection
from retrieval_distill.utils import fingerprint_obj, write_json_atomic

SYSTEMS = ("bm25", "init", "teacher", "student")


class Pipeline:
    """Run the stages of a :class:`PipelineConfig`.

    Args:
        cfg: the config (see :func:`retrieval_distill.config.load_config`).
        force: stage names to rerun even if their stamp matches.
        echo: where progress lines go (default: print).
    """

    STAGES = ("queries", "splits", "bm25", "init", "candidates", "teacher", "train", "baseline", "index", "eval")

    def __init__(self, cfg: PipelineConfig, force: set[str] | None = None, echo: Callable[[str], None] = print):
        self.cfg = cfg
        self.work = Path(cfg.work_dir)
        self.force = force or set()
        self.echo = echo
        self.timings: dict[str, float] = {}
        self.skipped: set[str] = set()
        self._colls: dict[str, Collection] = {}
        self._synthetic: bool | None = None
        self.current_stage: str | None = None
        self._has_test: bool | None = None

    # ------------------------------------------------------------------ helpers
    def path(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def collection(self, split: str) -> Collection:
        """``train`` / ``dev`` / ``test`` collections (dev = carved out of train)."""
        if split not in self._colls:
            if split in ("train", "dev"):
                full = self.train_source()
                sp = json.loads(self.path("splits.json").read_text())
                self._colls["train"] = full.subset(sp["train"], name=f"{full.name}/train-minus-dev")
                self._colls["dev"] = full.subset(sp["dev"], name=f"{full.name}/dev")
            elif self.has_test:
                self._colls[split] = load_collection(self.cfg.dataset, split=self.cfg.splits.test)
            else:  # a corpus-only dataset: the corpus, no queries
                from retrieval_distill.data.collections import load_corpus
                from retrieval_distill.distill.synth import resolve_corpus_path

                self._colls[split] = Collection(name=f"{self.cfg.dataset} (corpus only)", queries={}, qrels={},
                                                corpus=load_corpus(resolve_corpus_path(self.cfg.dataset)))
        return self._colls[split]

    @property
    def synthetic(self) -> bool:
        """Whether the training queries are made by the ``queries`` stage (``queries.source``;
        ``auto``: when the dataset has no judged queries in ``splits.train``)."""
        if self._synthetic is None:
            src = self.cfg.queries.source
            self._synthetic = src == "synthetic" or (src == "auto" and not self._judged(self.cfg.splits.train))
        return self._synthetic

    @property
    def has_test(self) -> bool:
        """Whether the dataset has judged ``splits.test`` queries (a corpus-only folder has none)."""
        if self._has_test is None:
            self._has_test = self._judged(self.cfg.splits.test)
        return self._has_test

    def _judged(self, split: str) -> bool:
        """Whether ``split`` of the dataset has judged queries; ``False`` when its qrels or
        the queries file are missing but the corpus is there.

        Raises:
            FileNotFoundError: no corpus either (not a dataset)."""
        from retrieval_distill.distill.synth import resolve_corpus_path

        try:
            return bool(load_collection(self.cfg.dataset, split=split).judged_qids())
        except FileNotFoundError:
            resolve_corpus_path(self.cfg.dataset)  # raises when there is no corpus at all
            return False

    def splits_used(self) -> tuple[str, ...]:
        """The splits every stage runs on: train, dev and, when the dataset has one, test."""
        return ("train", "dev", "test") if self.has_test else ("train", "dev")

    def train_source(self) -> Collection:
        """The training queries before the dev carve: the dataset's ``splits.train``, or the
        ``queries`` stage's synthetic folder."""
        if "train-source" not in self._colls:
            if self.synthetic:
                c = load_collection(self.path("queries", "synth"), split="train")
                c.name = f"{self.cfg.dataset}/synthetic"
            else:
                c = load_collection(self.cfg.dataset, split=self.cfg.splits.train)
            self._colls["train-source"] = c
        return self._colls["train-source"]

    def _stamp(self, stage: str, inputs: dict) -> tuple[Path, str]:
        return self.path("stamps", f"{stage}.json"), fingerprint_obj(inputs)

    def run_stage(self, stage: str, inputs: dict, outputs: list[Path], fn: Callable[[], None]) -> None:
        stamp_path, fp = self._stamp(stage, inputs)
        if stage not in self.force and stamp_path.exists() and all(p.exists() for p in outputs):
            stamp = json.loads(stamp_path.read_text())
            if stamp.get("fingerprint") == fp:
                self.skipped.add(stage)
                # the time of the run that made the outputs (reports show it marked as reused)
                self.timings[stage] = float(stamp.get("seconds", 0.0))
                self.echo(f"[{stage}] up to date, skipped")
                return
        self.echo(f"[{stage}] running")
        self.current_stage = stage
        t0 = time.time()
        fn()
        missing = [str(p) for p in outputs if not p.exists()]
        if missing:
            raise RuntimeError(f"stage {stage} did not write {missing}")
        self.timings[stage] = time.time() - t0
        write_json_atomic(stamp_path, {"fingerprint": fp, "inputs": inputs, "seconds": round(self.timings[stage], 1)})
        self.echo(f"[{stage}] done in {self.timings[stage]:.1f} s")

    # ------------------------------------------------------------------ stages
    def queries(self) -> None:
        """Synthetic training queries (only when :attr:`synthetic`)."""
        if not self.synthetic:
            return
        qc = self.cfg.queries
        out = self.path("queries", "synth")

        def go():
            from retrieval_distill.distill.synth import resolve_corpus_path, synth_corpus

            res = synth_corpus(resolve_corpus_path(self.cfg.dataset), out, kinds=qc.kinds, seed=qc.seed, max_docs=qc.max_docs)
            per_kind = ", ".join(f"{k} {v}" for k, v in res.stats.get("per_kind", {}).items())
            self.echo(f"  {len(res.queries)} synthetic queries from {res.stats.get('documents')} documents ({per_kind})")

        inputs = {"dataset": self.cfg.dataset, **qc.model_dump(exclude={"positive", "source"})}
        self.run_stage("queries", inputs, [out / "queries.jsonl", out / "qrels" / "train.tsv", out / "synth.json"], go)

    def splits(self) -> None:
        c = self.cfg.splits

        def go():
            full = self.train_source()
            qids = sorted(full.judged_qids())
            pool = qids
            if c.dev_documents == "unseen":  # queries whose relevant documents no other query shares
                cited = Counter(d for q in qids for d, g in full.qrels[q].items() if g > 0)
                pool = [q for q in qids if all(cited[d] == 1 for d, g in full.qrels[q].items() if g > 0)]
                if len(pool) < min(c.dev_size, len(qids) // 4):
                    raise ValueError(f"splits.dev_documents: unseen: only {len(pool)} of {len(qids)} train queries have "
                                     f"relevant documents no other query shares; dev_size is {c.dev_size}")
            dev = sorted(random.Random(c.seed).sample(pool, min(c.dev_size, len(qids) // 4)))
            dev_set = set(dev)
            record = {"dev": dev, "train": [q for q in qids if q not in dev_set], "seed": c.seed}
            if c.dev_documents != "any":
                record["dev_documents"] = c.dev_documents
                self.echo(f"  dev: {len(dev)} of the {len(pool)} train queries whose relevant documents no other query shares")
            write_json_atomic(self.path("splits.json"), record)

        # dev_documents only in the stamp when set: stamps of runs made before it stay valid
        inputs = {"dataset": self.cfg.dataset, **c.model_dump(exclude={"dev_documents"} if c.dev_documents == "any" else None)}
        if self.synthetic:  # older stamps (dataset queries) stay valid
            inputs["queries"] = self._stamp_fp("queries")
        self.run_stage("splits", inputs, [self.path("splits.json")], go)

    def bm25(self) -> None:
        c = self.cfg.candidates
        outs = [self.path("runs", f"bm25.{s}.trec") for s in self.splits_used()]

        def go():
            from retrieval_distill.evaluation.runs import write_run
            from retrieval_distill.search.bm25 import BM25Searcher, build_bm25_index

            idx = self.path("bm25-index")
            build_bm25_index(self.collection("test"), idx)
            searcher = BM25Searcher(idx, k1=c.bm25_k1, b=c.bm25_b)
            for split, out in zip(self.splits_used(), outs):
                res = searcher.batch_search(self.collection(split).queries, k=c.bm25_k)
                write_run(out, {q: {h.docid: h.score for h in hs} for q, hs in res.items()}, tag="bm25")

        self.run_stage("bm25", {"dataset": self.cfg.dataset, **c.model_dump(), "splits": self._stamp_fp("splits")}, outs, go)

    def _stamp_fp(self, stage: str) -> str | None:
        p = self.path("stamps", f"{stage}.json")
        return json.loads(p.read_text())["fingerprint"] if p.exists() else None

    def _embeddings(self, model: str, name: str) -> tuple[list[str], np.ndarray]:
        """Corpus embeddings of ``model`` (cached and resumable, see index.build.encode_corpus)."""
        from retrieval_distill.index.build import encode_corpus
        from retrieval_distill.models.encoder import Encoder

        enc = Encoder(model, batch_size=self.cfg.index.encode_batch_size)
        return encode_corpus(enc, self.collection("test"), self.path("embeddings", name))

    def _dense_runs(self, model: str, emb_name: str, tag: str, k: int, query_model: str | None = None,
                    splits: list[str] | None = None) -> None:
        """Exact top-``k`` runs ``runs/{tag}.{split}.trec``: documents encoded by ``model``
        (cached under ``embeddings/{emb_name}``), queries by ``query_model`` (default ``model``)."""
        from retrieval_distill.evaluation.runs import write_run
        from retrieval_distill.models.encoder import Encoder

        docids, emb = self._embeddings(model, emb_name)
        enc = Encoder(query_model or model)
        for split in splits or self.splits_used():
            coll = self.collection(split)
            qids = list(coll.queries)
            qe = enc.encode_queries([coll.queries[q] for q in qids])
            scores = qe @ emb.T
            run = {}
            kk = min(k, len(docids))  # a corpus smaller than k: every document
            for i, q in enumerate(qids):
                top = np.argpartition(-scores[i], kk if kk < len(docids) else kk - 1)[:kk]
                run[q] = {docids[j]: float(scores[i, j]) for j in top}
            write_run(self.path("runs", f"{tag}.{split}.trec"), run, tag=tag)

    def init(self) -> None:
        outs = [self.path("runs", f"init.{s}.trec") for s in self.splits_used()]
        inputs = {"model": self.cfg.student_init, "k": self.cfg.candidates.dense_k, "splits": self._stamp_fp("splits")}
        self.run_stage("init", inputs, outs, lambda: self._dense_runs(self.cfg.student_init, "init", "init", self.cfg.candidates.dense_k))

    def candidates(self) -> None:
        outs = [self.path("candidates", f"{s}.trec") for s in self.splits_used()]
        train_k = self.cfg.candidates.train_k

        def go():
            from retrieval_distill.evaluation.runs import read_run, write_run

            for split, out in zip(self.splits_used(), outs):
                bm = read_run(self.path("runs", f"bm25.{split}.trec"))
                de = read_run(self.path("runs", f"init.{split}.trec"))
                depth = train_k if split == "train" and train_k else None
                run = {}
                for q in self.collection(split).queries:
                    # reciprocal-rank fusion orders the union; every candidate of either list is kept
                    fused: dict[str, float] = {}
                    for r in (bm.get(q, {}), de.get(q, {})):
                        for rank, d in enumerate(sorted(r, key=lambda d: -r[d])[:depth], 1):
                            fused[d] = fused.get(d, 0.0) + 1.0 / (60 + rank)
                    if split == "train":
                        # training needs the teacher's score of every positive, found or not
                        floor = min(fused.values(), default=1.0) / 2
                        for d, g in self.collection(split).qrels.get(q, {}).items():
                            if g > 0 and d not in fused:
                                fused[d] = floor
                    run[q] = fused
                write_run(out, run, tag="candidates")

        inputs = {"bm25": self._stamp_fp("bm25"), "init": self._stamp_fp("init")}
        if train_k:  # older stamps (no train_k) stay valid
            inputs["train_k"] = train_k
        self.run_stage("candidates", inputs, outs, go)

    def teacher(self) -> None:
        tc = self.cfg.teacher
        outs = [self.path("teacher", "scores", s, "manifest.json") for s in self.splits_used()]
        outs += [self.path("runs", f"teacher.{s}.trec") for s in self.splits_used()[1:]] + [self.path("teacher", "ensemble.json")]

        def go():
            from retrieval_distill.evaluation.runs import read_run, write_run
            from retrieval_distill.teachers.base import TeacherSpec, build_teacher
            from retrieval_distill.teachers.scoring import score_candidates, scores_dict

            corpus = self.collection("test")
            doc_text = {d: corpus.doc_text(d) for d in corpus.corpus}
            dev = self.collection("dev")
            dev_cands = {q: list(r) for q, r in read_run(self.path("candidates", "dev.trec")).items()}
            fits = self._fit_members(tc.choices())
            # 1. each candidate teacher: member weights chosen on dev (grid search by nDCG@10
            #    over the dev candidates); the best candidate on dev is kept
            tried, dev_scores = [], {}  # a member shared by several candidates is scored on dev once
            for choice in tc.choices():
                members = [self._member_spec(m) for m in choice.members]
                spec = TeacherSpec(kind="ensemble", members=members, normalization=choice.normalization, name=choice.name)
                cand = build_teacher(spec)
                for m_t, m_spec in zip(cand.members, members):
                    self._prime(m_t, m_spec)
                fit = cand.fit_weights(dev.qrels, dev_cands, dev.queries, doc_text, grid=choice.weight_grid,
                                       member_cache=dev_scores)
                self.echo(f"  teacher {choice.name}: weights {fit['weights']} ({fit['metric']} on dev {fit['best']:.4f}; "
                          f"equal weights {fit['equal']:.4f})")
                tried.append((fit["best"], choice.name, cand, fit))
            best = max(range(len(tried)), key=lambda i: (tried[i][0], -i))  # ties: the first listed
            _, name, teacher, fit = tried[best]
            record = {"spec": teacher.spec.model_dump(), "dev_fit": fit}
            if fits:
                record["fit_steps"] = fits
            if tc.candidates:
                record["candidates"] = [{"name": n, "weights": f["weights"], f"dev_{f['metric']}": f["best"]} for _, n, _, f in tried]
                record["chosen"] = name
                self.echo(f"  teacher kept: {name} (best {fit['metric']} on dev of {len(tried)} candidates)")
            write_json_atomic(self.path("teacher", "ensemble.json"), record)
            # 2. the score file for every split; teacher runs (reranked candidates) for dev/test
            for split in self.splits_used():
                coll = self.collection(split)
                out_dir = self.path("teacher", "scores", split)
                score_candidates(teacher, self.path("candidates", f"{split}.trec"), coll.queries, doc_text, out_dir,
                                 queries_per_shard=tc.shard_queries, overwrite=True)
                if split != "train":
                    write_run(self.path("runs", f"teacher.{split}.trec"), scores_dict(out_dir), tag="teacher")

        inputs = {"teacher": tc.stamp(), "candidates": self._stamp_fp("candidates")}
        self.run_stage("teacher", inputs, outs, go)

    def _fit_dir(self, m) -> Path:
        """Where the fit step of a ``projection: fit`` ColBERT member writes (one folder per
        distinct member spec, so candidates sharing a member fit it once)."""
        return self.path("teacher", "fit", f"colbert-{fingerprint_obj({'model': m.model, 'options': m.options})[:12]}")

    def _fit_members(self, choices) -> dict[str, dict]:
        """The fit steps of the teacher list: every ColBERT member with ``projection: fit``
        gets its projection fitted (:func:`~retrieval_distill.teachers.fit.fit_colbert_projection`)
        on the train queries (train minus dev) with hard negatives from the train candidates.
        A fit whose inputs (member spec, candidates) are unchanged is reused, so a teacher stage
        killed while scoring does not fit again.

        Returns:
            fit folder (relative to the work dir) -> its ``fit.json`` card."""
        from retrieval_distill.config import colbert_fit
        from retrieval_distill.evaluation.runs import read_run
        from retrieval_distill.teachers.fit import fit_colbert_projection

        cards: dict[str, dict] = {}
        for choice in choices:
            for m in choice.members:
                fit = colbert_fit(m)
                if fit is None:
                    continue
                out = self._fit_dir(m)
                key = str(out.relative_to(self.work))
                if key in cards:
                    continue
                inputs = {"member": m.model_dump(), "candidates": self._stamp_fp("candidates")}
                done = out / "pipeline-inputs.json"
                if done.is_file() and json.loads(done.read_text()) == inputs and (out / "projection.pt").is_file():
                    self.echo(f"  teacher fit {m.display_name()}: reusing {out}")
                else:
                    train = self.collection("train")
                    cands = {q: list(r) for q, r in read_run(self.path("candidates", "train.trec")).items()}
                    opts = {k: v for k, v in m.options.items() if k not in ("projection", "fit")}
                    fit_colbert_projection(m.model, train.queries, train.qrels, cands, train.doc_text, out, options=opts,
                                           **fit.model_dump())
                    write_json_atomic(done, inputs)
                cards[key] = json.loads((out / "fit.json").read_text())
                self.echo(f"  teacher fit {m.display_name()}: {_fit_summary(cards[key])}")
        return cards

    def _member_spec(self, m):
        """Fill in work-dir dependent options (the BM25 index path; the fitted projection of a
        ``projection: fit`` ColBERT member)."""
        from retrieval_distill.config import colbert_fit

        fitted = colbert_fit(m) is not None
        proj = self._fit_dir(m) / "projection.pt" if fitted else None
        m = m.model_copy(deep=True)
        if fitted:
            m.options = {**{k: v for k, v in m.options.items() if k != "fit"}, "projection": str(proj)}
        if m.kind == "bm25":
            m.options.setdefault("index", str(self.path("bm25-index")))
            m.options.setdefault("k1", self.cfg.candidates.bm25_k1)
            m.options.setdefault("b", self.cfg.candidates.bm25_b)
        return m

    def _prime(self, teacher, spec) -> None:
        """Give an embedding teacher the cached corpus embeddings (no second encoding).

        The pipeline's corpus embeddings are fp32 (:meth:`_embeddings`); a member that runs in
        bf16 (``options.dtype: bf16`` on a CPU with native bf16) encodes its own documents, so
        its document scores are those of its queries' dtype, as in ``rd teacher score``."""
        if spec.kind == "bi_encoder" and hasattr(teacher, "set_document_embeddings"):
            if getattr(teacher, "dtype", "fp32") != "fp32":
                self.echo(f"  teacher member {spec.display_name()}: runs {teacher.dtype}; the pipeline's fp32 "
                          "corpus embeddings are not preloaded (it encodes its documents itself)")
                return
            name = "init" if spec.model == self.cfg.student_init else "teacher-" + str(spec.model).replace("/", "_")
            docids, emb = self._embeddings(spec.model, name)
            teacher.set_document_embeddings(docids, emb, preloaded=True)  # the scoring job's document pass skips them

    def _student_job(self, out: Path, losses=None):
        """The :class:`~retrieval_distill.distill.job.StudentJob` of the ``train`` stage, run by
        :func:`~retrieval_distill.distill.job.train_from_config` (the path ``rd student
        train`` takes too). Train minus dev of :meth:`_train_folder`; ``two_tower``: the
        train candidates (the relabelled lists for teacher positives) and the teacher's
        train scores; ``query_side``: the init's corpus embeddings as the frozen documents,
        the teacher's scores when a loss needs them, dev = the carved split, best epoch kept.
        ``losses`` replaces ``train.losses`` (the ``baseline`` stage's teacher-free job)."""
        from retrieval_distill.distill.job import DevSpec, StudentJob
        from retrieval_distill.distill.query_side import TEACHER_TERMS, QuerySideSpec

        sp = json.loads(self.path("splits.json").read_text())
        coll, split = self._train_folder()
        dev = sp["dev"]
        if coll != self.cfg.dataset:  # relabelled synthetic queries: a query left without candidates is dropped
            have = load_collection(coll, split=split).queries
            dev = [q for q in dev if q in have]
        dev_qids = self.path("splits", "dev.qids")
        dev_qids.parent.mkdir(parents=True, exist_ok=True)
        dev_qids.write_text("".join(q + "\n" for q in dev))
        train = self.cfg.train if losses is None else self.cfg.train.model_copy(update={"losses": list(losses)})
        job = {"mode": self.cfg.student.mode, "collection": coll, "split": split,
               "exclude_qids_file": str(dev_qids), "output": str(out), "train": train}
        if self.cfg.student.mode == "two_tower":
            tpos = self.synthetic and self.cfg.queries.positive == "teacher"
            job["candidates"] = str(self.path("queries", "teacher-positives", "candidates.trec") if tpos
                                    else self.path("candidates", "train.trec"))
        else:
            job["query_side"] = QuerySideSpec(documents=str(self.path("embeddings", "init")), **self.cfg.student.query_side)
        if self.cfg.student.selects_epoch:
            job["dev"] = DevSpec(collection=coll, split=split, qids_file=str(dev_qids),
                                 metrics=list(self.cfg.eval.metrics), each_epoch=True, keep="best")
        if self.cfg.student.mode == "two_tower" or any(l.name in TEACHER_TERMS for l in train.losses):
            manifest = json.loads(self.path("teacher", "scores", "train", "manifest.json").read_text())
            job.update(scores=str(self.path("teacher", "scores", "train")), teacher=manifest.get("teacher_name"),
                       teacher_fingerprint=manifest.get("teacher_fingerprint"))
        return StudentJob(**job)

    def _train_folder(self) -> tuple[str, str]:
        """(collection, split) the student trains on: the dataset's train split, the synthetic
        folder, or (``queries.positive: teacher``) the teacher-relabelled synthetic folder."""
        if not self.synthetic:
            return self.cfg.dataset, self.cfg.splits.train
        if self.cfg.queries.positive == "teacher":
            return str(self.path("queries", "teacher-positives")), "train"
        return str(self.path("queries", "synth")), "train"

    def _teacher_positives(self) -> None:
        """Relabel the synthetic queries with the teacher (``queries.positive: teacher``):
        :func:`~retrieval_distill.distill.synth.teacher_positives` over the train and dev
        candidates and scores, written to ``queries/teacher-positives`` (qrels + candidates)."""
        from retrieval_distill.distill.synth import teacher_positives

        # train and dev together: dev is relabelled the same way, so dev selection measures
        # what training optimises
        counts = teacher_positives(
            self.path("queries", "synth"), [self.path("candidates", f"{s}.trec") for s in ("train", "dev")],
            [self.path("teacher", "scores", s) for s in ("train", "dev")], self.path("queries", "teacher-positives"))
        self.echo(f"  teacher positives: {counts['queries']} queries relabelled, {counts['dropped_pairs']} source pairs dropped, "
                  f"{counts['no_candidates']} queries without another candidate skipped")

    def _student_encoder(self):
        """The trained student as an :class:`Encoder`: in ``query_side`` mode the init encodes
        documents (the vectors the index holds) and the student encodes queries."""
        from retrieval_distill.models.encoder import Encoder

        student = str(self.path("models", "student"))
        if self.cfg.student.mode == "query_side":
            return Encoder(self.cfg.student_init, query_model=student)
        return Encoder(student)

    def train(self) -> None:
        out = self.path("models", "student")
        tpos = self.synthetic and self.cfg.queries.positive == "teacher"

        def go():
            from retrieval_distill.distill.job import train_from_config

            if tpos:
                self._teacher_positives()
            train_from_config(self._student_job(out))
            card = json.loads((out / "training_card.json").read_text())
            if self.cfg.student.mode == "query_side":
                self.echo(f"  query-side student: {card.get('examples')} training queries, documents encoded "
                          f"{card.get('documents_encoded')}{_kept_epoch(card)}, {card.get('train_seconds')} s")
            else:
                self.echo(f"  two-tower student: {card.get('examples')} training examples from "
                          f"{card.get('data', {}).get('queries')} queries, {card.get('steps')} steps{_kept_epoch(card)}, "
                          f"{card.get('train_seconds')} s")

        inputs = {"train": self.cfg.train.model_dump(), "teacher": self._stamp_fp("teacher")}
        if self.cfg.student.mode != "two_tower" or self.cfg.student.keep is not None:  # older two_tower stamps stay valid
            inputs["student"] = self.cfg.student.model_dump(exclude={"baseline"})  # the baseline stage has its own stamp
        if self.synthetic:
            inputs["positive"] = self.cfg.queries.positive
        self.run_stage("train", inputs, [out / "training_card.json"], go)

    def baseline(self) -> None:
        """The same-budget supervised baseline (``student.baseline``): the train stage's job
        with only the teacher-free losses (same queries, negatives, epochs, seed, dev
        selection), into ``models/baseline``, and its dev/test runs ``runs/baseline.*.trec``
        (query-side: against the init's corpus vectors, as the student; two-tower: the
        corpus re-encoded by the baseline, exact search)."""
        losses = self.cfg.baseline_losses()
        if not losses:
            return
        out = self.path("models", "baseline")
        splits = self.splits_used()[1:]
        outs = [out / "training_card.json"] + [self.path("runs", f"baseline.{s}.trec") for s in splits]

        def go():
            from retrieval_distill.distill.job import train_from_config

            train_from_config(self._student_job(out, losses=losses))
            card = json.loads((out / "training_card.json").read_text())
            self.echo(f"  baseline ({', '.join(l.name for l in losses)}; no teacher): {card.get('steps')} steps{_kept_epoch(card)}, "
                      f"{card.get('train_seconds')} s")
            if self.cfg.student.mode == "query_side":
                self._dense_runs(self.cfg.student_init, "init", "baseline", self.cfg.candidates.dense_k,
                                 query_model=str(out), splits=splits)
            else:
                self._dense_runs(str(out), "baseline", "baseline", self.cfg.candidates.dense_k, splits=splits)

        inputs = {"losses": [l.model_dump() for l in losses], "train": self.cfg.train.model_dump(exclude={"losses"}),
                  "student": self.cfg.student.model_dump(), "teacher": self._stamp_fp("teacher"),
                  "candidates": self._stamp_fp("candidates")}
        if self.synthetic:
            inputs["positive"] = self.cfg.queries.positive
            inputs["train_stage"] = self._stamp_fp("train")  # the teacher-relabelled folder the train stage writes
        self.run_stage("baseline", inputs, outs, go)

    def index(self) -> None:
        ic = self.cfg.index
        outs = [self.path("index", f.lower(), "CURRENT") for f in ic.factories]

        def go():
            from retrieval_distill.index.build import build_index
            from retrieval_distill.index.store import IndexStore

            enc = self._student_encoder()
            if self.cfg.student.mode == "query_side":
                # the student encodes queries only: index the init's vectors it was trained
                # against; the manifest names the student as the query encoder (rd serve uses it)
                docids, emb = self._embeddings(self.cfg.student_init, "init")
                extra = {"student_mode": "query_side"}
            else:
                docids, emb = self._embeddings(str(self.path("models", "student")), "student")
                extra = {}
            corpus = self.collection("test")
            for f in ic.factories:
                store = IndexStore(self.path("index", f.lower()))
                v = build_index(emb, docids, store.new_version_dir(f), factory=f, params=ic.params.get(f, {}), encoder=enc,
                                texts=corpus.doc_texts(docids),
                                manifest_extra={"documents_side": "student", "corpus": self.cfg.dataset, **extra})
                store.publish(v)
                self.echo(f"  index {f}: {v.path}")

        inputs = {"index": ic.model_dump(), "train": self._stamp_fp("train")}
        if self.cfg.student.mode != "two_tower":
            inputs["student_mode"] = self.cfg.student.mode
        self.run_stage("index", inputs, outs, go)

    def evaluate(self) -> dict:
        ec = self.cfg.eval
        report_md = Path(ec.report)
        outs = [report_md, report_md.with_suffix(".json")]
        result: dict = {}

        def go():
            from retrieval_distill.evaluation.compare import compare
            from retrieval_distill.evaluation.metrics import evaluate, format_table
            from retrieval_distill.evaluation.report import write_report
            from retrieval_distill.evaluation.runs import read_run, write_run
            from retrieval_distill.index.store import IndexStore
            from retrieval_distill.search.dense import DenseSearcher

            store = IndexStore(self.path("index", self.cfg.index.factories[0].lower()))
            searcher = DenseSearcher(store.current(), self._student_encoder())
            systems = SYSTEMS + (("baseline",) if self.cfg.baseline_losses() else ())
            tables, cmp_base = {}, None
            last = self.splits_used()[-1]  # test, or dev for a dataset without a test split
            for split in self.splits_used()[1:]:
                coll = self._eval_collection(split)
                res = searcher.batch_search(coll.queries, k=self.cfg.candidates.dense_k)
                write_run(self.path("runs", f"student.{split}.trec"), {q: {h.docid: h.score for h in hs} for q, hs in res.items()}, tag="student")
                runs = {s: read_run(self.path("runs", f"{s}.{split}.trec")) for s in systems}
                tables[split] = {s: evaluate(coll.qrels, r, ec.metrics) for s, r in runs.items()}
                if split == last:
                    cmp = compare(coll.qrels, runs, baseline="init", metrics=ec.metrics, out_png=report_md.with_suffix(".png"))
                    if "baseline" in systems:
                        cmp_base = compare(coll.qrels, {"baseline": runs["baseline"], "student": runs["student"]},
                                           baseline="baseline", metrics=ec.metrics)
            result.update(self._write_report(tables, cmp, report_md, cmp_base))

        inputs = {"eval": ec.model_dump(), "index": self._stamp_fp("index"), "teacher": self._stamp_fp("teacher")}
        if self.cfg.baseline_losses():
            inputs["baseline"] = self._stamp_fp("baseline")
        self.run_stage("eval", inputs, outs, go)
        if not result:
            result.update(json.loads(report_md.with_suffix(".json").read_text()))
        return result

    def _eval_collection(self, split: str) -> Collection:
        """The queries and qrels a split is reported on. Dev of teacher-relabelled synthetic
        queries uses the relabelled qrels (the teacher's top candidate other than the source
        document: what the student trained and was selected for); with the source documents
        as qrels, dev would reward copying the query's words (BM25 scores 1.0)."""
        coll = self.collection(split)
        if split == "dev" and self.synthetic and self.cfg.queries.positive == "teacher":
            relabelled = load_collection(self.path("queries", "teacher-positives"), split="train")
            coll = relabelled.subset([q for q in coll.queries if q in relabelled.queries], name=f"{coll.name} (teacher positives)")
        return coll

    def _write_report(self, tables, cmp, report_md: Path, cmp_base=None) -> dict:
        from retrieval_distill.evaluation.metrics import format_table
        from retrieval_distill.evaluation.report import write_report

        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
        args = sys.argv[2:]
        args = [a for i, a in enumerate(args) if a != "--force" and (i == 0 or args[i - 1] != "--force")
                and not a.startswith("--force=")]  # forcing a stage does not change what reproduces the figures
        command = " ".join(["rd", "pipeline"] + args) if sys.argv[1:2] == ["pipeline"] else "rd pipeline"
        metrics = self.cfg.eval.metrics
        data = {
            split: {s: {**r.overall, "n_judged": r.n_judged} for s, r in t.items()} for split, t in tables.items()
        }
        data["significance_vs_init"] = cmp.to_dict() if hasattr(cmp, "to_dict") else cmp
        data["teacher"] = json.loads(self.path("teacher", "ensemble.json").read_text())
        data["stage_seconds"] = {k: round(v, 1) for k, v in self.timings.items()}
        card = json.loads(self.path("models", "student", "training_card.json").read_text())
        data["student"] = {"mode": self.cfg.student.mode, "train_seconds": card.get("train_seconds"),
                           "documents_encoded_for_training": card.get("documents_encoded"),
                           "dev_selected": card.get("dev_selected")}
        sections = {
            _table_heading(self.cfg.name, split, t["student"].n_judged): format_table(t, metrics) for split, t in tables.items()
        }
        if cmp_base is not None:
            bcard = json.loads(self.path("models", "baseline", "training_card.json").read_text())
            data["baseline"] = {"losses": [l.model_dump() for l in self.cfg.baseline_losses()],
                                "train_seconds": bcard.get("train_seconds"), "dev_selected": bcard.get("dev_selected")}
            data["significance_vs_baseline"] = cmp_base.to_dict()
        st, sel = data["student"], data["student"]["dev_selected"] or {}
        if self.synthetic:
            qc = self.cfg.queries
            sections["Training queries"] = (
                f"Synthetic: {qc.kinds} queries made from {qc.max_docs or 'all'} documents of the corpus (seed {qc.seed}); "
                "dev is carved from them and its relevant document is "
                + ("the teacher's top candidate other than the query's source document" if qc.positive == "teacher"
                   else "the query's source document")
                + (". Test is the dataset's real queries, never seen in training." if self.has_test
                   else ". There is no judged test split: dev measures agreement with the teacher, not quality.")
            )
        sections["Teacher"] = _teacher_section(data["teacher"])
        sections["Student"] = (
            f"Mode `{st['mode']}`"
            + (" (only the query tower trained, against the init's corpus vectors; the index holds those same vectors)"
               if st["mode"] == "query_side" else " (both towers trained; the corpus re-encoded by the student for the index)")
            + f"; training {st['train_seconds']} s"
            + (f"; epoch {sel.get('epoch'):g} kept (best dev nDCG@10, {_dev_figure(sel):.4f})" if sel else "")
            + ". Stage wall times (s" + ("; * up to date here, the time of the run that made it" if self.skipped else "") + "): "
            + ", ".join(f"{k} {v}{'*' if k in self.skipped else ''}" for k, v in data["stage_seconds"].items()) + "."
        )
        if cmp_base is not None:
            b, bsel = data["baseline"], data["baseline"]["dev_selected"] or {}
            sections["Same-budget baseline"] = (
                f"`baseline`: the student's job with only the teacher-free losses ({', '.join(l['name'] for l in b['losses'])}): "
                "the same training queries, negatives, epochs, steps and seed"
                + (", the same dev selection" if sel else "")
                + f"; training {b['train_seconds']} s"
                + (f"; epoch {bsel.get('epoch'):g} kept (dev nDCG@10 {_dev_figure(bsel):.4f})" if bsel else "")
                + ". What the teacher adds is the student's difference from it, tested below "
                "(`student.baseline` in the config).\n\n" + cmp_base.to_markdown()
            )
        sections[f"Significance on {self.splits_used()[-1]} vs the student init"] = cmp.to_markdown() if hasattr(cmp, "to_markdown") else str(cmp)
        write_report(report_md, title=f"{self.cfg.name}: distillation results on {self.cfg.dataset} ({self.cfg.profile} profile)",
                     sections=sections, command=command, commit=commit, data=data)
        return data

    # ------------------------------------------------------------------ driver
    def preflight(self) -> None:
        """Fail before any stage runs on what a later stage would otherwise fail on, minutes
        or hours in: every model the config names must resolve (``student_init``,
        ``train.init``, each teacher member's model), and the dataset must load with at least
        one document and judged queries in its train and test splits.

        Raises:
            ModelNotFoundError: a model that does not exist (the message lists what was tried).
            FileNotFoundError, DataFormatError: the dataset does not load.
            ValueError: an empty corpus, or a split without judged queries.
        """
        from retrieval_distill.models.resolve import ModelNotFoundError, resolve_model

        models = {self.cfg.student_init: "student_init", self.cfg.train.init: "train.init", **self._preflight_settings()}
        for model, where in models.items():
            try:
                folder = Path(resolve_model(model))
            except ModelNotFoundError as e:
                raise ModelNotFoundError(f"{where}: {e}") from None
            if folder.is_dir() and not any((folder / f).is_file() for f in ("config.json", "modules.json")):
                raise ModelNotFoundError(f"{where}: {model}: a folder, but not a model (no config.json or modules.json)")
        test = self.collection("test")
        if not test.corpus:
            raise ValueError(f"{self.cfg.dataset}: the corpus has no documents")
        if not self.has_test and not (self.synthetic and self._corpus_only()):
            raise ValueError(f"{self.cfg.dataset}: split {self.cfg.splits.test!r} has no judged queries (qrels with grade >= 1)")
        if self.synthetic:
            usable = sum(1 for d in test.corpus.values() if (d.get("title") or "").strip() or (d.get("text") or "").strip())
            if usable < 4:
                raise ValueError(f"{self.cfg.dataset}: {usable} document(s) with text; synthetic training queries "
                                 "and a dev split need at least 4")
        if self.synthetic and self.cfg.teacher.candidates:
            raise ValueError("teacher.candidates with synthetic queries: dev judges each query's source document, which "
                             "every teacher finds, so dev cannot choose between them; give one teacher (members:)")
        if self.synthetic and self.cfg.queries.max_docs is not None and self.cfg.queries.max_docs < 4:
            raise ValueError(f"queries.max_docs {self.cfg.queries.max_docs}: carving a dev split needs queries from at least 4 documents")
        checks = [] if self.synthetic else [(self.cfg.splits.train, load_collection(self.cfg.dataset, split=self.cfg.splits.train))]
        if self.has_test:
            checks.append((self.cfg.splits.test, test))
        for split, coll in checks:
            if not coll.judged_qids():
                raise ValueError(f"{self.cfg.dataset}: split {split!r} has no judged queries (qrels with grade >= 1)")
            if split == self.cfg.splits.train and len(coll.judged_qids()) // 4 < 1:
                raise ValueError(f"{self.cfg.dataset}: split {split!r} has {len(coll.judged_qids())} judged queries; "
                                 "carving a dev split needs at least 4")

    def _corpus_only(self) -> bool:
        """Whether the dataset is a folder (or local id) with no qrels at all: a user's own
        corpus, trained on synthetic queries and reported on dev only."""
        from retrieval_distill.data.collections import find_local

        p = Path(self.cfg.dataset)
        folder = p if p.is_dir() else (find_local(self.cfg.dataset) or (None,))[0]
        return folder is not None and not any(Path(folder, "qrels").glob("*.tsv"))

    def _preflight_settings(self) -> dict[str, str]:
        """The settings a later stage would reject: loss names and options for the student
        mode, teacher kinds and models, metric names. Returns the teacher members' models
        (model -> where the config names it), for :meth:`preflight` to resolve."""
        from retrieval_distill.evaluation.metrics import parse_metrics
        from retrieval_distill.teachers import base as teacher_base

        if not self.cfg.train.losses:
            raise ValueError("train.losses is empty: name at least one loss")
        if self.cfg.student.mode == "query_side":
            from retrieval_distill.distill.query_side import build_terms

            build_terms(self.cfg.train.losses)
        else:
            from retrieval_distill.distill import losses as L
            from retrieval_distill.distill.job import embedding_losses

            unknown = [l.name for l in self.cfg.train.losses if l.name not in L.LOSSES]
            if unknown:
                raise ValueError(f"train.losses: unknown loss {unknown[0]!r} for student.mode two_tower; known: {sorted(L.LOSSES)}")
            L.check_loss_specs(self.cfg.train.losses)
            emb = sorted({l.name for l in self.cfg.train.losses} & embedding_losses())
            if emb:
                raise ValueError(f"train.losses: {', '.join(emb)} read(s) a teacher's embeddings, which the pipeline does not "
                                 "attach: train it with `rd student train` and a `leaf:` section")
        try:  # the built-in teacher kinds register themselves on import
            from retrieval_distill.teachers import bi_encoder, bm25, colbert, cross_encoder, ensemble  # noqa: F401
        except ImportError:  # pragma: no cover
            pass
        models: dict[str, str] = {}

        def walk(spec, where):
            if spec.kind not in teacher_base._REGISTRY:
                raise ValueError(f"{where}: unknown teacher kind {spec.kind!r}; known: {sorted(teacher_base._REGISTRY)}")
            if spec.kind not in ("bm25", "ensemble") and not spec.model:
                raise ValueError(f"{where}: a {spec.kind} teacher needs `model:`")
            if spec.model and spec.kind != "bm25":
                models.setdefault(spec.model, f"{where} ({spec.display_name()})")
            for i, m in enumerate(spec.members):
                walk(m, f"{where}.members[{i}]")

        tc = self.cfg.teacher
        for j, choice in enumerate(tc.choices()):
            for i, m in enumerate(choice.members):
                walk(m, f"teacher.candidates[{j}].members[{i}]" if tc.candidates else f"teacher.members[{i}]")
        parse_metrics(self.cfg.eval.metrics)
        return models

    def run(self, until: str | None = None, preflight: bool = True) -> dict:
        """Run the stages in order (see the module docstring), after :meth:`preflight`
        (``preflight=False`` when the caller already ran it), up to ``until`` if given."""
        t0 = time.time()
        if preflight:
            self.preflight()
        if not self.has_test:
            self.echo(f"{self.cfg.dataset}: no judged queries (corpus only): training on synthetic queries, reported on dev")
        steps = [self.queries, self.splits, self.bm25, self.init, self.candidates, self.teacher, self.train, self.baseline,
                 self.index, self.evaluate]
        result = {}
        for name, step in zip(self.STAGES, steps):
            r = step()
            if name == "eval":
                result = r
            if until == name:
                break
        total = time.time() - t0
        self.echo("\nstage wall times: " + ", ".join(f"{k} {v:.1f}s" + (" (skipped)" if k in self.skipped else "") for k, v in self.timings.items()))
        self.echo(f"total wall time: {total:.1f} s")
        if result:
            self.echo("\n" + _report_section(Path(self.cfg.eval.report), _table_heading(self.cfg.name, self.splits_used()[-1])))
            self.echo(f"\nreport: {self.cfg.eval.report} (dev table, significance tests, stage times)")
        return result


def _dev_figure(selected: dict) -> float:
    """The dev figure of a training card's ``dev_selected`` (its key names the evaluator:
    ``dev_ndcg@10`` for query-side students, ``dev_cosine_ndcg@10`` for two-tower ones)."""
    return next((float(v) for k, v in selected.items() if k not in ("epoch", "step")), float("nan"))


def _kept_epoch(card: dict) -> str:
    """The log phrase for a training card's dev-selected epoch, e.g. ``", dev-selected epoch 5
    (dev nDCG@10 0.7728)"``; empty when the card has no dev selection."""
    sel = card.get("dev_selected") or {}
    return f", dev-selected epoch {sel.get('epoch')} (dev nDCG@10 {_dev_figure(sel):.4f})" if sel else ""


def _teacher_section(rec: dict) -> str:
    """The report's Teacher section from ``teacher/ensemble.json``: the kept teacher, its
    members and dev-chosen weights, every candidate's dev figure, and the fit steps."""
    spec, fit = rec["spec"], rec["dev_fit"]
    metric = fit.get("metric", "ndcg@10")
    members = ", ".join(f"{m.get('name') or m['kind']} {w:g}" for m, w in zip(spec.get("members", []), spec.get("weights", [])))
    text = (f"Kept: `{spec.get('name')}` (members and weights: {members}; normalization {spec.get('normalization')}), "
            f"{metric} on dev {fit['best']:.4f} (equal weights {fit['equal']:.4f}).")
    if rec.get("candidates"):
        text += " Candidates judged on dev: " + ", ".join(
            f"`{c['name']}` {c[f'dev_{metric}']:.4f}" for c in rec["candidates"]) + "."
    for folder, card in (rec.get("fit_steps") or {}).items():
        text += f" Fit step `{folder}`: {_fit_summary(card)}."
    return text


def _fit_summary(card: dict) -> str:
    """One line of a ColBERT fit's ``fit.json`` card (the teacher stage's log and the report)."""
    losses = card.get("loss_history") or []
    return (f"ColBERT projection {card['dim']}x{card['hidden']} over {card['model']} tokens, "
            f"{card['queries']} train queries, {card['epochs']} epochs"
            + (f", loss {losses[0]['loss']} -> {losses[-1]['loss']}" if losses else "") + f", {card['seconds']} s")


def _table_heading(name: str, split: str, n_judged: int | None = None) -> str:
    """A report table's heading, ``"{name} {split} ({n_judged} judged queries)"``; without
    ``n_judged``, the prefix that :func:`_report_section` finds it by."""
    prefix = f"{name} {split} ("
    return prefix if n_judged is None else f"{prefix}{n_judged} judged queries)"


def _report_section(report_md: Path, prefix: str) -> str:
    """The heading and body of the first ``## {prefix}...`` section of a report (the test
    table printed at the end of a run); the whole report if there is none."""
    text = report_md.read_text(encoding="utf-8")
    for part in text.split("\n## ")[1:]:
        if part.startswith(prefix):
            return "## " + part.split("<!--", 1)[0].rstrip()
    return text


def run_pipeline(config: str | Path, profile: str | None = None, force: set[str] | None = None, until: str | None = None) -> dict:
    """Load a config and run the pipeline (see module docstring)."""
    return Pipeline(load_config(config, profile), force=force).run(until=until)
