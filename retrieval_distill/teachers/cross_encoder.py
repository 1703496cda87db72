"""Cross-encoder teacher: a sentence-transformers ``CrossEncoder`` scoring (query, passage).

A cross-encoder reads query and passage together through one transformer and outputs a
relevance logit (Nogueira & Cho 2019, "Passage Re-ranking with BERT"). Any
sentence-transformers ``CrossEncoder`` folder or hub name works
(``cross-encoder/ms-marco-MiniLM-L6-v2`` for online users); here one is trained with
``rd teacher fit`` (:mod:`retrieval_distill.teachers.fit`). Scores are raw logits (the
activation is the identity), scale ``logit``.

Speed options (spec options), each checked against fp32 on a sample of the first pairs it
scores and refused if it drifts (:mod:`retrieval_distill.teachers.speed`):

* ``backend="onnx"``, ``quantize="int8"``: the model is exported to ONNX once
  (``torch.onnx.export``) and dynamically quantised to int8 weights
  (``onnxruntime.quantization.quantize_dynamic``), cached under ``$RD_CACHE/onnx/<weights
  fingerprint>/``, and run with ONNX Runtime on CPU with length-sorted batches.
  sentence-transformers' own ``backend="onnx"`` needs ``optimum``, whose releases pin
  ``transformers<5`` (this project runs transformers 5.24), so the export and the ORT
  runner are written here.
* ``dtype="bf16"``: ``torch.autocast`` in bfloat16 where the CPU has native bf16
  (AMX / AVX512-BF16); elsewhere autocast would only emulate it, slower than fp32, so the
  teacher runs fp32 and its spec and fingerprint say so
  (:func:`~retrieval_distill.teachers.base.resolve_teacher_dtype`).

``CrossEncoder.predict`` already sorts each call's pairs by length before batching (less
padding); the ONNX path does the same with token counts.

Options: ``batch_size`` (32), ``max_length`` (256), ``backend`` (``torch``/``onnx``),
``quantize`` (``int8``/``none``), ``dtype`` (``fp32``/``bf16``), ``check_sample`` (64
pairs), ``rel_tol`` (0.1), ``min_spearman`` (0.98), ``threads`` (ORT intra-op threads).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from retrieval_distill.models.resolve import CACHE, ModelNotFoundError, model_fingerprint, resolve_model
from retrieval_distill.teachers.base import TeacherSpec, check_options, register_teacher, resolve_teacher_dtype, spec_fingerprint
from retrieval_distill.teachers.speed import check_against_fp32, stays_exact
from retrieval_distill.utils import atomic_path

log = logging.getLogger(__name__)


def load_cross_encoder(name_or_path: str, max_length: int = 256):
    """Load a ``CrossEncoder`` (logit output) through :func:`resolve_model`.

    Raises:
        ModelNotFoundError: the model cannot be found.
        ValueError: a local folder that is not a sequence-classification (cross-encoder)
            model, such as a bi-encoder (fit one with ``rd teacher fit``).
    """
    import torch
    from sentence_transformers import CrossEncoder

    path = resolve_model(name_or_path)
    cfg = Path(path) / "config.json"
    if Path(path).is_dir():
        if not cfg.exists():
            raise ModelNotFoundError(f"{path}: no config.json (not a Hugging Face model folder)")
        archs = json.loads(cfg.read_text()).get("architectures") or []
        if not any("SequenceClassification" in a for a in archs):
            raise ValueError(
                f"{name_or_path}: not a cross-encoder (architectures {archs}); a bi-encoder backbone must be "
                "trained into one first: rd teacher fit --backbone ..."
            )
    return CrossEncoder(path, max_length=max_length, activation_fn=torch.nn.Identity(), device="cpu"), path


class OnnxCrossEncoder:
    """ONNX Runtime runner for a cross-encoder exported from its torch model.

    Args:
        ce: the loaded ``CrossEncoder`` (used for export and tokenisation).
        folder: where the exported (and quantised) models are cached.
        quantize: ``int8`` (dynamic int8 weights) or ``none``.
        threads: ORT intra-op threads.
    """

    def __init__(self, ce, folder: Path, quantize: str = "int8", threads: int | None = None):
        import onnxruntime as ort

        self.tokenizer = ce.tokenizer
        self.max_length = ce.max_length
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / "model.onnx"
        if not fp32.exists():
            self._export(ce, fp32)
        path = fp32
        if quantize == "int8":
            # per-channel, reduce-range int8 weights of the MatMuls, first transformer layer
            # kept fp32: the recipe of the query encoder (models/onnx_encoder.quantize_int8);
            # plain per-tensor int8 drifted past the fp32 check on a fitted MiniLM cross-encoder
            path = folder / "model-int8-pc-rr-l0fp32.onnx"
            if not path.exists():
                from retrieval_distill.models.onnx_encoder import quantize_int8

                with atomic_path(path, suffix=".onnx") as tmp:
                    quantize_int8(fp32, tmp)
        elif quantize not in ("none", None):
            raise ValueError(f"quantize must be 'int8' or 'none', got {quantize!r}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.path = path

    @staticmethod
    def _export(ce, path: Path) -> None:
        from retrieval_distill.models.onnx_encoder import export_onnx

        example = ce.tokenizer(["a query"], ["a passage"], return_tensors="pt", padding=True, truncation=True)
        export_onnx(ce.model.eval(), lambda m, features: m(**features).logits, example, path, "logits")

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        """Logits of ``pairs``: float32 (n,). Pairs are tokenised once, sorted by token count
        and batched so that each batch pads to its own longest pair."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        enc = self.tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=self.max_length)
        lengths = np.array([len(x) for x in enc["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        out = np.zeros(len(pairs), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            width = int(lengths[idx].max())
            feed = {}
            for name in self.input_names:
                arr = np.zeros((len(idx), width), dtype=np.int64)
                if name == "input_ids":
                    arr[:] = self.tokenizer.pad_token_id
                for r, j in enumerate(idx):
                    row = enc[name][j]
                    arr[r, : len(row)] = row
                feed[name] = arr
            out[idx] = self.session.run(None, feed)[0][:, 0]
        return out


@register_teacher("cross_encoder")
class CrossEncoderTeacher:
    """Cross-encoder teacher (scale ``logit``); see the module docstring for options.

    Raises:
        ModelNotFoundError: the model path does not exist / cannot be resolved.
        ValueError: the model is not a cross-encoder, an unknown option or option value.
        SpeedCheckError: (when scoring) a speed option disagrees with fp32 on the sample.
    """

    scale = "logit"
    OPTIONS = frozenset({
        "batch_size", "max_length", "backend", "quantize", "dtype", "threads", "check_sample", "rel_tol", "min_spearman",
    })

    def __init__(self, spec: TeacherSpec):
        check_options(spec, self.OPTIONS)
        if not spec.model:
            raise ValueError("a cross_encoder teacher needs a model (path or hub name)")
        self.dtype, spec = resolve_teacher_dtype(spec)  # bf16 -> fp32 on a CPU without native bf16
        o = spec.options
        self.spec = spec
        self.batch_size = int(o.get("batch_size", 32))
        self.max_length = int(o.get("max_length", 256))
        self.backend = o.get("backend", "torch")
        self.quantize = o.get("quantize", "int8" if self.backend == "onnx" else "none")
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"cross_encoder backend must be 'torch' or 'onnx', got {self.backend!r}")
        self.ce, self.path = load_cross_encoder(spec.model, self.max_length)
        self.tokenizer = self.ce.tokenizer
        self._weights_fp = model_fingerprint(self.path) if Path(self.path).is_dir() else spec.model
        self.onnx: OnnxCrossEncoder | None = None
        if self.backend == "onnx":
            folder = CACHE / "onnx" / self._weights_fp
            self.onnx = OnnxCrossEncoder(self.ce, folder, self.quantize, o.get("threads"))
        self.fast = self.backend == "onnx" or self.dtype == "bf16"
        self.speed_check: dict | None = None
        self.check_sample = int(o.get("check_sample", 64))
        self.rel_tol = float(o.get("rel_tol", 0.1))
        self.min_spearman = float(o.get("min_spearman", 0.98))

    @property
    def fingerprint(self) -> str:
        """Spec (with backend/dtype options) plus the weights fingerprint."""
        return spec_fingerprint(self.spec, self._weights_fp)

    def option_name(self) -> str:
        if self.backend == "onnx":
            return f"onnx-{self.quantize}"
        return self.dtype

    def score_fp32(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """Plain ``CrossEncoder.predict`` in fp32: float32 (n,) logits."""
        pairs = list(zip(queries, passages))
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.ce.predict(pairs, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True), dtype=np.float32).reshape(-1)

    def score_unchecked(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """The speed path (ONNX Runtime graph or bf16 autocast) *without* its fp32 check:
        float32 (n,) logits. For benchmarks that time a path the check refuses; the scoring
        job calls :meth:`score`, which never skips the check."""
        if self.onnx is not None:
            return self.onnx.predict(list(zip(queries, passages)), self.batch_size)
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.score_fp32(queries, passages)

    def score(self, queries: list[str], passages: list[str]) -> np.ndarray:
        """Logit of each (query, passage) pair: float32 (n,).

        The first call with a speed option checks ``check_sample`` of its pairs against
        fp32 and raises :class:`~retrieval_distill.teachers.speed.SpeedCheckError` on drift.
        """
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
        if not self.fast or stays_exact(self.fast, self.speed_check, len(queries)):
            return self.score_fp32(queries, passages)  # no speed option, or too few pairs to check it on
        if self.speed_check is None:
            n = min(self.check_sample, len(queries))
            self.speed_check = check_against_fp32(
                self.score_unchecked, self.score_fp32, list(queries[:n]), list(passages[:n]),
                option=self.option_name(), rel_tol=self.rel_tol, min_spearman=self.min_spearman,
            )  # fmt: skip
            log.info("speed check %s", self.speed_check)
        return self.score_unchecked(queries, passages)
