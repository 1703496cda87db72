"""Pydantic models of a pipeline config (YAML), with named profiles.

A config file holds a base config plus ``profiles:`` whose entries are deep-merged over
the base (``rd pipeline eval/configs/scifact.yaml --profile quick``). Unknown keys are
errors, so a typo fails before any work starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from retrieval_distill.distill.train import LossSpec, TrainConfig
from retrieval_distill.teachers.base import TeacherSpec
from retrieval_distill.utils import read_yaml_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _first_error(e: ValidationError) -> str:
    """The first error of a pydantic ValidationError on one line: ``loc: message``."""
    err = e.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" if err["loc"] else err["msg"]


class SplitConfig(_Strict):
    """Which qrels splits are used. ``dev_size`` queries are carved out of ``train`` with
    ``seed`` (fixed), and every choice is made on dev; ``test`` is only reported.

    ``dev_documents: unseen`` draws dev only among the train queries whose relevant documents
    are relevant to no other train query, so that no dev-relevant document is a training
    positive. A student trained over a fixed corpus (query-side above all) learns which
    documents get cited; a dev whose relevant documents it trained on rewards that memory
    (on SciFact, 181 of the 283 test-relevant documents are train positives, and dev carved at
    random from train picks the epoch that memorises most). ``any`` (default): any judged query.
    """

    train: str = "train"
    test: str = "test"
    dev_size: int = Field(120, ge=1)
    seed: int = 13
    dev_documents: Literal["any", "unseen"] = "any"


class CandidateConfig(_Strict):
    """Candidate lists: the union of BM25 top-``bm25_k`` and student-init top-``dense_k``.
    ``train_k`` (optional) cuts the TRAINING queries' lists to BM25 top-``train_k`` and init
    top-``train_k`` (fewer teacher scores on a large synthetic query set; the classic-corpus
    recipe uses 20); dev and test keep the full depths."""

    bm25_k: int = Field(100, ge=1)
    dense_k: int = Field(100, ge=1)
    train_k: int | None = Field(None, ge=1)
    bm25_k1: float = 0.9
    bm25_b: float = 0.4


class ColbertFitConfig(_Strict):
    """The fit step of a ColBERT member (``options: {projection: fit, fit: {...}}``): the
    ``teacher`` stage fits the member's linear projection on the pipeline's train queries
    (train minus dev, hard negatives from the train candidates) with
    :func:`retrieval_distill.teachers.fit.fit_colbert_projection` before any teacher scores,
    so dev judges the fitted teacher like any other. Same settings as ``rd teacher fit-colbert``."""

    dim: int = Field(128, ge=1)
    negatives: int = Field(4, ge=0)
    epochs: int = Field(10, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    seed: int = 13


def colbert_fit(spec: TeacherSpec) -> ColbertFitConfig | None:
    """The fit settings of a member whose projection the pipeline fits (``None`` otherwise).

    Raises:
        ValueError: ``projection: fit`` on a kind other than ``colbert``, ``fit`` options
            without ``projection: fit``, or a bad fit setting."""
    opts = spec.options or {}
    if opts.get("projection") != "fit":
        if "fit" in opts:
            raise ValueError(f"teacher member {spec.display_name()}: `options.fit` needs `options.projection: fit`")
        return None
    if spec.kind != "colbert":
        raise ValueError(f"teacher member {spec.display_name()}: `projection: fit` is a ColBERT fit step; kind is {spec.kind!r}")
    try:
        return ColbertFitConfig(**(opts.get("fit") or {}))
    except ValidationError as e:
        raise ValueError(f"teacher member {spec.display_name()}: options.fit: {_first_error(e)}") from None


class TeacherChoice(_Strict):
    """One candidate teacher: an ensemble of ``members`` normalised per query, weights chosen
    on dev from ``weight_grid`` (each member's weight takes a value from the grid; ``[1.0]``
    = equal weights, nothing fitted). A ``colbert`` member with ``options: {projection: fit}``
    has its projection fitted first (:class:`ColbertFitConfig`)."""

    name: str | None = None
    members: list[TeacherSpec] = Field(default_factory=list)
    normalization: str = "zscore"
    weight_grid: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])

    @model_validator(mode="after")
    def _check(self):
        from retrieval_distill.teachers.ensemble import NORMALIZATIONS

        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"teacher.normalization {self.normalization!r}: use one of {', '.join(NORMALIZATIONS)}")
        if any(w < 0 for w in self.weight_grid) or not any(w > 0 for w in self.weight_grid):
            raise ValueError(f"teacher.weight_grid {self.weight_grid}: weights >= 0, at least one > 0")
        for m in self.members:
            colbert_fit(m)
        return self


class TeacherConfig(TeacherChoice):
    """The teacher (``teacher:`` in a pipeline config): one :class:`TeacherChoice` given
    inline (``members:``...), or several under ``candidates:``, each fitted on dev (its
    ensemble weights) and evaluated there (nDCG@10 of its reranking of the dev candidates);
    the best is kept and every candidate's figure is recorded in ``teacher/ensemble.json``.

    Attributes:
        shard_queries: queries per score-file shard (the unit of resume).
        candidates: the teachers to choose from (then ``members`` must be empty).
    """

    shard_queries: int = Field(64, ge=1)
    candidates: list[TeacherChoice] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_choices(self):
        if self.candidates and self.members:
            raise ValueError("teacher: give `members` (one teacher) or `candidates` (several to choose from on dev), not both")
        if not self.candidates and not self.members:
            raise ValueError("teacher.members is empty: name at least one teacher")
        for i, c in enumerate(self.candidates):
            if not c.members:
                raise ValueError(f"teacher.candidates[{i}].members is empty: name at least one teacher")
        names = [c.name for c in self.choices()]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher.candidates: names must differ, got {names}")
        return self

    def choices(self) -> list[TeacherChoice]:
        """The candidate teachers, each with a name (``candidate-<i>`` when unnamed; an
        inline teacher is ``ensemble``)."""
        if not self.candidates:
            return [TeacherChoice(name=self.name or "ensemble", members=self.members, normalization=self.normalization,
                                  weight_grid=self.weight_grid)]
        return [c.model_copy(update={"name": c.name or f"candidate-{i}"}) for i, c in enumerate(self.candidates)]

    def stamp(self) -> dict:
        """The settings that decide the teacher stage's outputs (``candidates`` left out when
        unused, so stamps written before it existed stay valid)."""
        return self.model_dump(exclude={"candidates", "name"} if not self.candidates else None)


class QueriesConfig(_Strict):
    """Where the training queries come from (``queries:`` in a pipeline config).

    Attributes:
        source: ``dataset``: the dataset's ``splits.train`` queries and qrels. ``synthetic``:
            the ``queries`` stage makes them from the corpus
            (:func:`retrieval_distill.distill.synth.synth_corpus`: titles, sentences, salient
            keywords; each query's source document is its positive) and the dev split is carved
            from them; the dataset's real queries are only used by ``splits.test``. ``auto``
            (default): ``synthetic`` when the dataset has no judged ``splits.train`` queries
            (no ``qrels/<train>.tsv``, as in a folder holding only ``corpus.jsonl``).
        kinds: query kinds (``title``, ``sentence``, ``keywords``, ``ict``).
        max_docs: make queries from a seeded sample of this many documents (all when unset).
        seed: seeds the sample and every choice inside a query.
        positive: ``source``: train towards each query's source document. ``teacher``: drop the
            source from the query's candidates and make the teacher's top-scored remaining
            candidate the positive (:func:`retrieval_distill.distill.synth.teacher_positives`;
            the source is a copy of the query's words, which real queries do not reward).
    """

    source: Literal["auto", "dataset", "synthetic"] = "auto"
    kinds: list[str] = Field(default_factory=lambda: ["title", "sentence", "keywords"])
    max_docs: int | None = Field(None, ge=1)
    seed: int = 13
    positive: Literal["source", "teacher"] = "source"

    @model_validator(mode="after")
    def _check(self):
        from retrieval_distill.distill.synth import KINDS

        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"queries.kinds {bad or self.kinds}: choose from {', '.join(KINDS)}")
        if self.source == "dataset" and self.positive == "teacher":
            raise ValueError("queries.positive: teacher relabels synthetic queries; it needs queries.source synthetic or auto")
        return self


class IndexConfig(_Strict):
    """FAISS indexes built from the student's document embeddings."""

    factories: list[str] = Field(default_factory=lambda: ["Flat", "HNSW32"], min_length=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"HNSW32": {"efConstruction": 200, "efSearch": 128}})
    encode_batch_size: int = 16


# Losses that read no teacher score or embedding: what a same-budget supervised baseline may use
# (query-side corpus InfoNCE; two-tower in-batch InfoNCE with the same hard negatives).
TEACHER_FREE_LOSSES = ("corpus_infonce", "infonce")


class StudentConfig(_Strict):
    """How the ``train`` stage trains the student (``student:`` in a pipeline config).

    Attributes:
        mode: ``two_tower`` (default): query and document towers train together, then the
            ``index`` stage re-encodes the corpus with the student. ``query_side``: only the
            query tower trains, against the FROZEN corpus embeddings of ``student_init`` that
            the ``init`` stage already computed (:mod:`retrieval_distill.distill.query_side`);
            the ``index`` stage indexes those same vectors, so no document is encoded twice.
            Dev (the split carved from train) is evaluated after every epoch and the best
            epoch is kept (cheap here: only the dev queries are encoded).
        keep: ``best``: evaluate the initial model and every epoch on dev and keep the trained
            epoch with the best dev nDCG@10 (sentence-transformers' IR evaluator and Hugging
            Face's best checkpoint, as ``dev.keep`` of ``rd student train``; the initial model's
            figure is recorded, never kept); ``last``: the last step. Default: ``best`` for
            ``query_side``, ``last`` for ``two_tower`` (each dev evaluation there re-encodes
            the corpus with the student: minutes per epoch on SciFact's 5,183 documents).
        query_side: options of :class:`~retrieval_distill.distill.query_side.QuerySideSpec`
            other than ``documents`` (``projection``, ``projection_lr``, ``corpus_sample``,
            ``max_candidates``...).
        baseline: also train the **same-budget supervised baseline** (the ``baseline`` stage):
            the same job (queries, negatives, epochs, steps, seed, dev selection) with only the
            losses that use no teacher. ``true``: ``train.losses`` minus the teacher terms
            (``corpus_infonce`` / ``infonce`` stay); a list: those losses instead. The report
            then tests the student against it (paired t-test and Fisher randomisation), so a
            distillation figure always stands beside what the qrels alone give.
    """

    mode: Literal["two_tower", "query_side"] = "two_tower"
    query_side: dict[str, Any] = Field(default_factory=dict)
    keep: Literal["best", "last"] | None = None
    baseline: bool | list[LossSpec] = False

    @property
    def selects_epoch(self) -> bool:
        """Whether the train stage keeps the dev-best epoch (see ``keep``)."""
        return (self.keep or ("best" if self.mode == "query_side" else "last")) == "best"

    @model_validator(mode="after")
    def _check(self):
        if self.query_side:
            if self.mode != "query_side":
                raise ValueError("`student.query_side` options are set but student.mode is two_tower")
            if "documents" in self.query_side:
                raise ValueError("`student.query_side.documents` is not an option here: the pipeline uses the init's corpus embeddings")
            from retrieval_distill.distill.query_side import QuerySideSpec

            QuerySideSpec(documents="-", **self.query_side)
        return self


class EvalConfig(_Strict):
    """Metrics (ranx names) and the report path (``{work_dir}`` is replaced by the config's
    ``work_dir``: ``{work_dir}/report.md`` keeps a user's run out of ``eval/reports``)."""

    metrics: list[str] = Field(default_factory=lambda: ["ndcg@10", "mrr@10", "recall@100"])
    report: str = "eval/reports/scifact.md"


class PipelineConfig(_Strict):
    """A whole pipeline run (see ``eval/configs/scifact.yaml``)."""

    name: str
    dataset: str
    work_dir: str
    profile: str = "base"
    student_init: str = "all-MiniLM-L6-v2"
    queries: QueriesConfig = Field(default_factory=QueriesConfig)
    splits: SplitConfig = Field(default_factory=SplitConfig)
    candidates: CandidateConfig = Field(default_factory=CandidateConfig)
    teacher: TeacherConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def baseline_losses(self) -> list[LossSpec]:
        """The losses of the ``baseline`` stage (empty when ``student.baseline`` is off)."""
        b = self.student.baseline
        if b is False:
            return []
        if b is True:
            return [l for l in self.train.losses if l.name in TEACHER_FREE_LOSSES]
        return list(b)

    @model_validator(mode="after")
    def _baseline(self):
        b = self.student.baseline
        if b is False:
            return self
        losses = self.baseline_losses()
        if not losses:
            raise ValueError("student.baseline: true keeps the losses that use no teacher "
                             f"({', '.join(TEACHER_FREE_LOSSES)}), and train.losses has none; give the "
                             "baseline's losses as a list (student.baseline: [{name: infonce}])")
        bad = [l.name for l in losses if l.name not in TEACHER_FREE_LOSSES]
        if bad:
            raise ValueError(f"student.baseline losses {bad} use the teacher: a supervised baseline may only use "
                             f"{', '.join(TEACHER_FREE_LOSSES)}")
        if [l.model_dump() for l in losses] == [l.model_dump() for l in self.train.losses]:
            raise ValueError("student.baseline would train the student's own losses again: the student uses no "
                             "teacher term, so it is its own baseline")
        return self

    @model_validator(mode="after")
    def _report_path(self):
        wd = self.work_dir.strip()
        if not wd or Path(wd).expanduser().resolve() in (Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()):
            raise ValueError(f"work_dir {self.work_dir!r}: give a folder of its own (work/NAME); the pipeline writes "
                             "and overwrites files under it")
        self.eval.report = self.eval.report.replace("{work_dir}", self.work_dir.rstrip("/"))
        return self


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (lists are replaced)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``KEY=VALUE`` overrides (dotted keys into nested mappings, values parsed as
    YAML: ``train.epochs=2``, ``dataset=my-corpus/``, ``index.factories=[Flat]``) to a copy
    of ``raw``, as Hydra's command-line overrides do.

    Raises:
        ValueError: an item without ``=``, an empty key, a key path through a non-mapping,
            ``profile``/``profiles`` (choose a profile with ``--profile``), or a value holding
            a non-finite number (YAML ``.nan``, ``.inf``).
    """
    import math

    import yaml

    def finite(v) -> bool:
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, dict):
            return all(finite(x) for x in v.values())
        if isinstance(v, list):
            return all(finite(x) for x in v)
        return True

    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (dotted keys: train.epochs=2)")
        if parts[0] in ("profile", "profiles"):
            raise ValueError(f"--set {item!r}: a profile is chosen with --profile NAME, not --set")
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
        try:
            node[parts[-1]] = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            node[parts[-1]] = value
        if not finite(node[parts[-1]]):
            raise ValueError(f"--set {item!r}: not a finite number")
    return out


def load_config(path: str | Path, profile: str | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML pipeline config, apply a profile, then ``overrides`` (``KEY=VALUE``, see
    :func:`apply_overrides`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not valid YAML, or not a mapping; a malformed override.
        KeyError: an unknown profile (message lists the known ones).
        pydantic.ValidationError: a wrong key or value.
    """
    raw = read_yaml_mapping(path, "pipeline config")
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ValueError(f"{path}: `profiles` must be a mapping of profile name -> overrides, not {type(profiles).__name__}")
    if profile:
        if profile not in profiles:
            raise KeyError(f"{path}: no profile {profile!r}; known: {sorted(profiles)}")
        if not isinstance(profiles[profile], dict):
            raise ValueError(f"{path}: profile {profile!r} must be a mapping of overrides, not {type(profiles[profile]).__name__}")
        raw = deep_merge(raw, profiles[profile])
        raw["profile"] = profile
    if overrides:
        raw = apply_overrides(raw, overrides)
    return PipelineConfig.model_validate(raw)
