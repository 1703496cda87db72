"""The Teacher seam of DESIGN.md.

A teacher scores (query, passage) pairs: ``score(queries, passages) -> np.ndarray`` of
shape ``(n,)``, float32, higher is more relevant. It is built from a :class:`TeacherSpec`
(kind + model + options), carries a stable ``fingerprint`` (spec and weights), and declares
its ``scale`` (``logit``, ``cosine``, ``maxsim``, ``bm25`` or ``fused``), because
margin-MSE is scale-sensitive and ensembles must normalise per query.

Teachers that can use ids as well as texts (BM25 reads its Lucene index, embedding
teachers reuse cached document vectors) also implement
``score_ids(qids, queries, docids, passages)``; :func:`score_pairs` prefers it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from retrieval_distill.utils import fingerprint_obj

log = logging.getLogger(__name__)


class TeacherSpec(BaseModel):
    """How to build a teacher.

    Attributes:
        kind: registered kind (``bi_encoder``, ``bm25``, ``cross_encoder``, ``colbert``, ``ensemble``).
        model: model path / bundled alias / hub name (``None`` for BM25).
        options: kind-specific options (``max_length``, ``batch_size``, ``index`` ...).
        members: sub-specs of an ensemble.
        weights: ensemble weights, one per member.
        normalization: ensemble per-query normalisation (``zscore`` or ``minmax``).
        name: a short readable name used in score files and reports.
    """

    model_config = ConfigDict(extra="forbid")

    kind: str
    model: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    members: list["TeacherSpec"] = Field(default_factory=list)
    weights: list[float] = Field(default_factory=list)
    normalization: str = "zscore"
    name: str | None = None

    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.kind == "ensemble":
            return "ensemble(" + "+".join(m.display_name() for m in self.members) + ")"
        return f"{self.kind}:{self.model}" if self.model else self.kind


@runtime_checkable
class Teacher(Protocol):
    """What every teacher provides (see module docstring)."""

    spec: TeacherSpec
    scale: str

    @property
    def fingerprint(self) -> str: ...

    def score(self, queries: list[str], passages: list[str]) -> np.ndarray: ...


_REGISTRY: dict[str, Callable[[TeacherSpec], Teacher]] = {}


def check_options(spec: "TeacherSpec", known: frozenset[str]) -> None:
    """Refuse options a teacher kind does not read.

    An unknown key (a typo such as ``doc_max_len``) would otherwise be ignored while still
    changing the spec's fingerprint, so a score file would claim a setting that never applied.

    Args:
        spec: the teacher's spec; ``spec.options`` is checked.
        known: the option names the kind reads.

    Raises:
        ValueError: naming the teacher, the unknown option(s) and the known ones.
    """
    unknown = sorted(set(spec.options) - known)
    if unknown:
        raise ValueError(
            f"teacher {spec.display_name()} ({spec.kind}): unknown option(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )


def resolve_teacher_dtype(spec: "TeacherSpec") -> tuple[str, "TeacherSpec"]:
    """The dtype a teacher's ``dtype`` option runs in on this CPU, and the spec it scores as.

    ``bf16`` (``torch.autocast`` in bfloat16) pays only where the CPU has native bf16
    (``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``); elsewhere autocast emulates it, slower
    than fp32 (``eval/bench/colbert_bf16.py``). So on such a CPU a ``bf16`` teacher falls back to
    fp32, logs it, and its spec (hence its fingerprint and the score file's manifest) says
    ``fp32``: the scores are exactly an fp32 teacher's, and a score folder started in bf16 on
    another machine is not silently resumed with fp32 scores (the fingerprints differ). The
    same rule as the index encoder's (:func:`retrieval_distill.models.encoder.resolve_dtype`).

    Args:
        spec: the teacher's spec; ``spec.options["dtype"]`` (default ``fp32``) is read.

    Returns:
        ``(dtype, spec)``: ``"fp32"`` or ``"bf16"``, and ``spec`` itself or, after a fallback,
        a copy with ``dtype: fp32``.

    Raises:
        ValueError: a ``dtype`` other than ``fp32`` / ``bf16``.
    """
    from retrieval_distill.models.encoder import DTYPES, resolve_dtype

    asked = spec.options.get("dtype", "fp32")
    if asked not in DTYPES:  # checked here too, so the message names the teacher kind
        raise ValueError(f"{spec.kind} dtype must be 'fp32' or 'bf16', got {asked!r}")
    runs = resolve_dtype(asked)
    if runs != asked:
        log.warning("teacher %s (%s): dtype bf16 asked for, but this CPU has no native bf16 (avx512_bf16 / amx_bf16): "
                    "running fp32, and the score file says so", spec.display_name(), spec.kind)
        spec = spec.model_copy(update={"options": {**spec.options, "dtype": runs}})
    return runs, spec


def register_teacher(kind: str) -> Callable:
    """Class decorator: ``@register_teacher("bm25")`` makes ``build_teacher`` know a kind."""

    def deco(cls):
        _REGISTRY[kind] = cls
        return cls

    return deco


def build_teacher(spec: TeacherSpec | dict) -> Teacher:
    """Build a teacher from a spec (or its dict form).

    Raises:
        ValueError: unknown kind.
        ModelNotFoundError: the model cannot be resolved.
    """
    if isinstance(spec, dict):
        spec = TeacherSpec.model_validate(spec)
    # import the built-in kinds so they register themselves
    from retrieval_distill.teachers import bi_encoder, bm25, ensemble  # noqa: F401

    try:
        from retrieval_distill.teachers import colbert, cross_encoder  # noqa: F401
    except ImportError:  # pragma: no cover - optional kinds not yet present
        pass
    if spec.kind not in _REGISTRY:
        raise ValueError(f"unknown teacher kind {spec.kind!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[spec.kind](spec)


def spec_fingerprint(spec: TeacherSpec, weights_fp: str = "") -> str:
    """Fingerprint of a spec plus the weights fingerprint of its model(s)."""
    return fingerprint_obj({"spec": spec.model_dump(), "weights": weights_fp})


def score_pairs(
    teacher: Teacher, qids: list[str], queries: list[str], docids: list[str], passages: list[str]
) -> np.ndarray:
    """Score pairs, using ids where the teacher can (``score_ids``), texts otherwise.

    Returns:
        float32 array of shape (n,).
    """
    if hasattr(teacher, "score_ids"):
        out = teacher.score_ids(qids, queries, docids, passages)
    else:
        out = teacher.score(queries, passages)
    return np.asarray(out, dtype=np.float32)


def parse_spec(text: str, options: dict[str, Any] | None = None) -> TeacherSpec:
    """A spec from the command line: a JSON/YAML file path, inline JSON, or ``kind:model``
    shorthand (``bi_encoder:all-MiniLM-L6-v2``, ``bm25``); ``options`` are merged in.

    Raises:
        ValueError: text that is none of these, a spec file that does not parse (named), or a
            spec that does not validate.
        FileNotFoundError: a ``.json``/``.yaml``/``.yml`` spec path that does not exist.
    """
    import json

    text = text.strip()
    p = Path(text)
    if p.is_file():
        raw = p.read_text(encoding="utf-8")
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(raw)
            else:
                data = json.loads(raw)
        except ValueError as e:  # json.JSONDecodeError
            raise ValueError(f"{p}: teacher spec is not valid JSON: {e}") from None
        except Exception as e:  # yaml.YAMLError
            raise ValueError(f"{p}: teacher spec is not valid YAML: {e}") from None
    elif p.suffix in (".json", ".yaml", ".yml") and not text.startswith("{"):
        raise FileNotFoundError(f"{p}: teacher spec file does not exist")
    elif text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"teacher spec is not valid JSON: {e}") from None
    else:
        kind, _, model = text.partition(":")
        if not kind or " " in kind:
            raise ValueError(f"teacher spec {text!r}: expected a spec file, inline JSON or kind:model")
        data = {"kind": kind, "model": model or None}
    if isinstance(data, dict) and "teacher" in data and "kind" not in data:
        data = data["teacher"]  # a score-folder manifest or a config section
    if isinstance(data, dict) and "fit" in data:
        # `rd teacher fit-weights` output: the spec plus a record of how its weights were chosen
        data = {k: v for k, v in data.items() if k != "fit"}
    try:
        spec = TeacherSpec.model_validate(data)
    except Exception as e:
        raise ValueError(f"invalid teacher spec {text[:80]!r}: {e}") from None
    if options:
        spec.options = {**spec.options, **options}
    if p.is_file():
        _resolve_relative_files(spec, p.parent)
    return spec


def _resolve_relative_files(spec: TeacherSpec, folder: Path) -> None:
    """A spec file may name files relative to its own folder (``rd teacher fit-colbert`` writes
    ``"projection": "projection.pt"`` beside ``teacher.json``, so the folder can be moved or
    copied): such a path is made absolute when it exists there; other paths are left as they
    are (relative to the working directory)."""
    proj = spec.options.get("projection")
    if isinstance(proj, str) and proj not in ("identity", "checkpoint") and not Path(proj).is_absolute():
        if (folder / proj).exists():
            spec.options = {**spec.options, "projection": str((folder / proj).absolute())}
    for m in spec.members:
        _resolve_relative_files(m, folder)
