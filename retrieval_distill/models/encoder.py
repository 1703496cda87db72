"""The Encoder seam of DESIGN.md: ``encode_queries`` / ``encode_documents`` -> float32 (n, d).

One class serves students and embedding teachers. It wraps a sentence-transformers model
resolved offline-first (:func:`retrieval_distill.models.resolve_model`) and optionally a
different model for the query side (asymmetric pairs: documents by the teacher embedding
model, queries by a small student aligned to its space).

``dtype="bf16"`` runs the *document* side under ``torch.autocast`` in bfloat16 (queries stay
fp32). Before the first document is encoded that way, a sample of the call's own documents
is encoded both ways and every bf16 vector must have cosine >= ``min_cosine`` with its fp32
vector (:class:`BF16FidelityError` otherwise); the result is kept in ``speed_check``. On a
CPU without native bf16 (``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``) autocast only
emulates it and runs slower than fp32, so the encoder falls back to fp32 there (``dtype``
then reads ``fp32``, and the fallback is logged). ``eval/bench/encode_bf16.py`` measures the
speed ratio and the cosines on real passages.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from retrieval_distill.models.resolve import load_sentence_transformer, model_fingerprint

log = logging.getLogger(__name__)

DTYPES = ("fp32", "bf16")
BF16_CHECK_DOCS = 16
"""Documents of the first bf16 call encoded both ways for the fidelity check."""
BF16_MIN_COSINE = 0.99
"""Default floor on cos(bf16 vector, fp32 vector) for every checked document (measured here:
>= 0.9999 for all-MiniLM-L6-v2 and all-mpnet-base-v2 on SciFact abstracts)."""


class BF16FidelityError(RuntimeError):
    """bf16 document vectors drift from the fp32 ones beyond the tolerance."""


def cpu_bf16_flags() -> list[str]:
    """The native-bf16 CPU flags of this machine (``avx512_bf16``, ``amx_bf16``) from
    ``/proc/cpuinfo``; an empty list where there are none or the file cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next(ln for ln in f if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16")})


def resolve_dtype(dtype: str, force_bf16: bool = False) -> str:
    """The dtype an encoder asked for ``dtype`` runs in on this CPU: ``bf16`` only where the CPU
    has native bf16 (or ``force_bf16``), else ``fp32``. The one rule for the encoder and for
    rebuild decisions.

    Raises:
        ValueError: ``dtype`` not in :data:`DTYPES`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"encoder dtype must be one of {DTYPES}, got {dtype!r}")
    return "bf16" if dtype == "bf16" and (force_bf16 or cpu_bf16_flags()) else "fp32"


class Encoder:
    """Encode queries and documents into L2-normalised float32 vectors.

    Args:
        model: document-side model (path, bundled alias or hub name).
        query_model: query-side model; defaults to ``model`` (symmetric).
        batch_size: texts per forward pass.
        max_length: token limit for documents (``None`` keeps the model's own,
            256 tokens for all-MiniLM-L6-v2, 384 for all-mpnet-base-v2).
        normalize: L2-normalise outputs so inner product equals cosine.
        dtype: ``fp32`` or ``bf16`` for the document side (see the module docstring); bf16
            falls back to fp32 on a CPU without native bf16 unless ``force_bf16``.
        min_cosine: the bf16 check's floor (default :data:`BF16_MIN_COSINE`).
        force_bf16: keep bf16 even where the CPU only emulates it (for measurements).

    Raises:
        ModelNotFoundError: a model cannot be resolved.
        ValueError: unknown ``dtype``.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        query_model: str | os.PathLike | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool = True,
        show_progress: bool = True,
        dtype: str = "fp32",
        min_cosine: float | None = None,
        force_bf16: bool = False,
    ):
        self.dtype = resolve_dtype(dtype, force_bf16)
        if self.dtype != dtype:
            log.warning("dtype bf16: this CPU has no native bf16 (no avx512_bf16 / amx_bf16 in /proc/cpuinfo); "
                        "autocast would emulate it and run slower, so documents are encoded in fp32")
        self.min_cosine = BF16_MIN_COSINE if min_cosine is None else float(min_cosine)
        self.speed_check: dict | None = None
        self.model_name = str(model)
        self.query_model_name = str(query_model) if query_model else self.model_name
        self.doc_model = load_sentence_transformer(model)
        self.native_max_length = self.doc_model.max_seq_length  # the model's own limit (tokens), before max_length
        if max_length:
            self.doc_model.max_seq_length = max_length
        self.query_model = (
            load_sentence_transformer(query_model) if query_model and str(query_model) != str(model) else self.doc_model
        )
        self.batch_size = batch_size
        self.normalize = normalize
        self.show_progress = show_progress
        self.query_onnx = None  # an OnnxQueryEncoder once use_onnx_queries() succeeded

    def use_onnx_queries(self, quantize: str = "none", threads: int = 1, min_cosine: float | None = None):
        """Encode queries with ONNX Runtime from now on (documents stay on torch).

        Exports the query model's whole forward (cached by weights fingerprint) and checks it
        against torch; see :class:`retrieval_distill.models.onnx_encoder.OnnxQueryEncoder`.

        Args:
            quantize: ``"none"`` (fp32) or ``"int8"`` (dynamic int8 MatMul weights).
            threads: ORT intra-op threads.
            min_cosine: fidelity floor (default 0.9999 fp32, 0.98 int8).

        Returns:
            The :class:`OnnxQueryEncoder` now in use.

        Raises:
            OnnxFidelityError: the exported model drifts; the encoder stays on torch.
        """
        from retrieval_distill.models.onnx_encoder import OnnxQueryEncoder

        self.query_onnx = OnnxQueryEncoder(
            self.query_model, model_fingerprint(self.query_model_name), quantize=quantize, threads=threads,
            normalize=self.normalize, min_cosine=min_cosine,
        )
        return self.query_onnx

    @property
    def query_backend(self) -> str:
        """``torch``, ``onnx`` or ``onnx-int8``: what encodes queries."""
        if self.query_onnx is None:
            return "torch"
        return "onnx" if self.query_onnx.quantize == "none" else f"onnx-{self.query_onnx.quantize}"

    @property
    def dim(self) -> int:
        return int(self.doc_model.get_embedding_dimension())

    @property
    def symmetric(self) -> bool:
        return self.query_model is self.doc_model

    def fingerprint(self) -> str:
        """Weights fingerprint of the document model (and query model if different)."""
        fp = model_fingerprint(self.model_name)
        if not self.symmetric:
            fp = fp[:8] + model_fingerprint(self.query_model_name)[:8]
        return fp

    def _encode(self, model, texts: list[str], progress: bool, bf16: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            emb = model.encode(
                list(texts),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=self.normalize,
                show_progress_bar=progress and self.show_progress and len(texts) > self.batch_size,
            )
        return np.ascontiguousarray(emb, dtype=np.float32)

    def check_bf16(self, texts: list[str]) -> dict:
        """Encode ``texts`` (the first :data:`BF16_CHECK_DOCS`) with the document model in fp32
        and in bf16 and compare the vectors.

        Returns:
            ``{"option": "bf16", "n", "min_cosine", "mean_cosine", "floor", "ok": True}``, also
            kept in ``speed_check``.

        Raises:
            BF16FidelityError: some document's cosine is below ``min_cosine``; the encoder
                then stays unusable in bf16 (every later call raises too).
        """
        sample = list(texts[:BF16_CHECK_DOCS])
        a = self._encode(self.doc_model, sample, progress=False)
        b = self._encode(self.doc_model, sample, progress=False, bf16=True)
        na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = (a * b).sum(axis=1) / np.where(na > 0, na, 1.0)
        res = {"option": "bf16", "n": len(sample), "min_cosine": float(cos.min()) if len(cos) else 1.0,
               "mean_cosine": float(cos.mean()) if len(cos) else 1.0, "floor": self.min_cosine}
        if not np.isfinite(res["min_cosine"]) or res["min_cosine"] < self.min_cosine:  # NaN vectors fail too
            self.speed_check = {**res, "ok": False}
            raise BF16FidelityError(
                f"{self.model_name}: bf16 document vectors differ from fp32 (min cosine {res['min_cosine']:.5f} over "
                f"{len(sample)} documents < {self.min_cosine}); encode in fp32 (dtype fp32)"
            )
        self.speed_check = {**res, "ok": True}
        return self.speed_check

    def encode_queries(self, texts: list[str], model=None) -> np.ndarray:
        """Queries -> float32 array of shape (n, dim) (by ONNX Runtime after :meth:`use_onnx_queries`).

        Args:
            texts: n query texts.
            model: another query tower (a loaded ``SentenceTransformer``) to encode with,
                with this encoder's batch size and normalisation, e.g. one of a ``cross_fit``
                teacher's fold students; ``None`` uses this encoder's query model.
        """
        if model is not None:
            return self._encode(model, texts, progress=False)
        if self.query_onnx is not None and len(texts):
            return self.query_onnx.encode(list(texts))
        return self._encode(self.query_model, texts, progress=len(texts) > 1000)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Documents (``title text``) -> float32 array of shape (n, dim); shows progress.

        Raises:
            BF16FidelityError: ``dtype="bf16"`` and the check on this first call's documents
                failed (see :meth:`check_bf16`).
        """
        bf16 = self.dtype == "bf16"
        if bf16 and texts:
            if self.speed_check is None:
                self.check_bf16(texts)
            elif not self.speed_check["ok"]:
                raise BF16FidelityError(f"{self.model_name}: bf16 failed its check ({self.speed_check}); use dtype fp32")
        return self._encode(self.doc_model, texts, progress=True, bf16=bf16)
