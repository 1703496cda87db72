"""The Encoder seam of DESIGN.md: ``encode_queries`` / ``encode_documents`` -> float32 (n, d).

One class serves students and embedding teachers. It wraps a sentence-transformers model
resolved offline-first (:func:`retrieval_distill.models.resolve_model`) and optionally a
different model for the query side (asymmetric pairs: documents by the teacher embedding
model, queries by a small student aligned to its space).
"""

from __future__ import annotations

import os

import numpy as np

from retrieval_distill.models.resolve import load_sentence_transformer, model_fingerprint


class Encoder:
    """Encode queries and documents into L2-normalised float32 vectors.

    Args:
        model: document-side model (path, bundled alias or hub name).
        query_model: query-side model; defaults to ``model`` (symmetric).
        batch_size: texts per forward pass.
        max_length: token limit for documents (``None`` keeps the model's own,
            256 tokens for all-MiniLM-L6-v2, 384 for all-mpnet-base-v2).
        normalize: L2-normalise outputs so inner product equals cosine.

    Raises:
        ModelNotFoundError: a model cannot be resolved.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        query_model: str | os.PathLike | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        normalize: bool = True,
        show_progress: bool = True,
    ):
        self.model_name = str(model)
        self.query_model_name = str(query_model) if query_model else self.model_name
        self.doc_model = load_sentence_transformer(model)
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

    def _encode(self, model, texts: list[str], progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=progress and self.show_progress and len(texts) > self.batch_size,
        )
        return np.ascontiguousarray(emb, dtype=np.float32)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Queries -> float32 array of shape (n, dim) (by ONNX Runtime after :meth:`use_onnx_queries`)."""
        if self.query_onnx is not None and len(texts):
            return self.query_onnx.encode(list(texts))
        return self._encode(self.query_model, texts, progress=len(texts) > 1000)

    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Documents (``title text``) -> float32 array of shape (n, dim); shows progress."""
        return self._encode(self.doc_model, texts, progress=True)
