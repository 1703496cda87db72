"""A low-latency query encoder: a sentence-transformers bi-encoder exported to ONNX Runtime.

At query time the search service encodes one short query (or a small micro-batch). For
inputs that small, PyTorch's per-operator dispatch costs more than the arithmetic, and
``SentenceTransformer.encode`` adds its own batching and sorting around the forward pass.
ONNX Runtime runs the same graph with fused kernels and far less per-call overhead, and
dynamic int8 weight quantisation (VNNI on this CPU) cuts the matrix-multiply cost further.

sentence-transformers' own ``backend="onnx"`` would do the export, but it needs ``optimum``,
whose releases pin transformers versions older than ours; so the export here is our own
(``torch.onnx.export`` of the whole ``SentenceTransformer`` forward: transformer, pooling,
any Dense projection such as a LEAF alignment head, and normalisation), cached by weights
fingerprint under ``$RD_CACHE/onnx/``.

int8 uses ONNX Runtime's dynamic quantisation of the MatMul weights only, per output
channel, with the 7-bit range (``reduce_range``: no saturation in the u8 x s8 VNNI/AVX2
kernels) and constant-B MatMuls only (``MatMulConstBOnly``: activation x activation products
such as attention scores stay fp32), except in the first transformer layer, which stays fp32:
its input is the embedding LayerNorm output, whose outlier channels quantise worst.
Per-tensor int8 weights drift too far on these models (cosine to torch as low as 0.93 on
SciFact queries). On SciFact test queries with the quick student (eval/reports/serving.md),
all-layer int8 gave cosine to torch min 0.9856 / mean 0.9920 and nDCG@10 -0.0063; keeping
layer 0 in fp32 gives min 0.9898 / mean 0.9942 and -0.0035, for 9 % more time per query.
See ONNX Runtime, "Quantize ONNX models" (dynamic quantisation) and Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference".

A batch of texts is tokenised once, sorted by token length and run in groups whose padding
stays under ``max_padding`` of their real tokens (padding costs full attention and FFN work
and is thrown away by mean pooling), so a micro-batch of mixed lengths is not padded to its
longest member.

Every instance checks itself against the torch model it was exported from on a sample of
queries and refuses to run (:class:`OnnxFidelityError`) when the vectors drift: cosine
below ``min_cosine`` for any sample query (default 0.9999 for fp32, 0.98 for int8).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from retrieval_distill.utils import atomic_path

CACHE = Path(os.environ.get("RD_CACHE", Path.home() / ".cache" / "retrieval-distill"))

#: Queries used to check an exported encoder against its torch original.
FIDELITY_SAMPLE = [
    "what is the role of p53 in tumour suppression",
    "0-dimensional biomaterials show inductive properties.",
    "how long does it take to boil an egg",
    "effect of aerodynamic heating on a thin plate at supersonic speed",
    "information retrieval evaluation with graded relevance judgments",
    "BRCA1 mutation carriers breast cancer risk",
    "a",
    "what does the acronym NASA stand for and when was it founded, in one very long question that goes on",
]


class OnnxFidelityError(RuntimeError):
    """The ONNX encoder's vectors drift from the torch model's beyond the tolerance."""


#: cosine floors on :data:`FIDELITY_SAMPLE` when ``min_cosine`` is not given
DEFAULT_MIN_COSINE = {"none": 0.9999, "int8": 0.98}
#: file name of each variant in the cache folder (the int8 name encodes its settings, so a
#: model quantised with other settings is never picked up)
VARIANTS = {"none": "model.onnx", "int8": "model-int8-matmul-perchannel-rr-l0fp32.onnx"}
#: MatMul node names of the first transformer layer, as torch.onnx names them for HF encoders
#: (BERT, MPNet, RoBERTa: ``/encoder/layer.0/``; others: ``/layers.0/``)
FIRST_LAYER = re.compile(r"/layers?\.0/")


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, keep_first_layer: bool = True) -> list[str]:
    """Dynamic int8 quantisation of the MatMul weights of ``src`` into ``dst`` (see module docstring).

    Args:
        src / dst: fp32 and int8 ``.onnx`` paths.
        keep_first_layer: leave the first transformer layer's MatMuls in fp32 (when the graph
            has nodes matching :data:`FIRST_LAYER`; otherwise every MatMul is quantised).

    Returns:
        The names of the MatMul nodes left in fp32.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = []
    if keep_first_layer:
        keep = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node
                if n.op_type == "MatMul" and FIRST_LAYER.search(n.name)]
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep,
        extra_options={"MatMulConstBOnly": True},
    )
    return keep


def export_onnx(module, call, example, path: str | os.PathLike, output_name: str) -> None:
    """Export ``call(module, features) -> Tensor`` to ONNX at ``path`` (written atomically).

    Used for both the query encoder (the whole ``SentenceTransformer`` forward) and the
    cross-encoder runner (:class:`retrieval_distill.teachers.cross_encoder.OnnxCrossEncoder`).

    Args:
        module: the torch module (in eval mode); its parameters become the graph's initialisers.
        call: ``(module, {input name: LongTensor (batch, seq)}) -> Tensor (batch, ...)``.
        example: tokenizer output (``return_tensors="pt"``) to trace with; its
            ``input_ids`` / ``attention_mask`` / ``token_type_ids`` become the graph inputs,
            with dynamic batch and sequence axes.
        path: the ``.onnx`` file.
        output_name: name of the graph output (dynamic batch axis).
    """
    import torch

    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]

    class _Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m  # attribute name kept: ONNX node names (FIRST_LAYER) start with /m/

        def forward(self, *args):
            return call(self.m, dict(zip(names, args)))

    with atomic_path(path, suffix=".onnx") as tmp, torch.no_grad():
        torch.onnx.export(
            _Wrapped(module),
            tuple(example[n] for n in names),
            str(tmp),
            input_names=names,
            output_names=[output_name],
            dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, output_name: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


class OnnxQueryEncoder:
    """Encode short texts with ONNX Runtime; same vectors as ``SentenceTransformer.encode``.

    Args:
        model: a loaded ``SentenceTransformer`` (exported on first use, then cached). The
            whole forward is exported: transformer, pooling, any ``Dense`` projection and
            ``Normalize`` modules.
        fingerprint: the model's weights fingerprint (cache key; see ``model_fingerprint``).
        quantize: ``"int8"`` (dynamic int8 MatMul weights) or ``"none"`` (fp32).
        threads: ORT intra-op threads (1 is fastest for a single short query on 2 cores;
            more threads do not spin while idle).
        normalize: L2-normalise the output vectors.
        min_cosine: smallest cosine to the torch vectors accepted on :data:`FIDELITY_SAMPLE`
            (default :data:`DEFAULT_MIN_COSINE` of ``quantize``).
        max_padding: most padding tokens per real token in one ORT call (length grouping).
        max_group: most texts per ORT call.
        cache_dir: where exported models live (default ``$RD_CACHE/onnx``).

    Attributes:
        min_cosine_seen: the worst cosine measured by the fidelity check.
        path: the ``.onnx`` file the session runs.

    Raises:
        OnnxFidelityError: the check failed (message gives the worst cosine).
        ValueError: unknown ``quantize``.
    """

    def __init__(
        self,
        model,
        fingerprint: str,
        quantize: str = "none",
        threads: int = 1,
        normalize: bool = True,
        min_cosine: float | None = None,
        max_padding: float = 0.25,
        max_group: int = 64,
        cache_dir: str | os.PathLike | None = None,
    ):
        import onnxruntime as ort

        if quantize not in VARIANTS:
            raise ValueError(f"quantize must be one of {sorted(VARIANTS)}, got {quantize!r}")
        self.tokenizer = model.tokenizer
        self.max_length = int(model.max_seq_length or 512)
        self.normalize = normalize
        self.quantize = quantize
        self.threads = int(threads)
        self.max_padding = float(max_padding)
        self.max_group = int(max_group)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.pad_left = getattr(self.tokenizer, "padding_side", "right") == "left"
        folder = Path(cache_dir or CACHE / "onnx") / f"st-{fingerprint}"
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / VARIANTS["none"]
        if not fp32.exists():
            self._export(model, fp32)
        path = folder / VARIANTS[quantize]
        if not path.exists():
            with atomic_path(path, suffix=".onnx") as tmp:
                quantize_int8(fp32, tmp)
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle pool threads sleep instead of spinning: the cores are shared with the HTTP loop
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.path = path
        self.min_cosine = float(DEFAULT_MIN_COSINE[quantize] if min_cosine is None else min_cosine)
        self.min_cosine_seen = self._check(model, self.min_cosine)

    @staticmethod
    def _export(model, path: Path) -> None:
        model = model.eval()
        example = model.tokenizer(["a query", "another longer query text"], return_tensors="pt", padding=True)
        export_onnx(model, lambda m, features: m(features)["sentence_embedding"], example, path, "sentence_embedding")

    def cosines_to_torch(self, model, texts: list[str]) -> np.ndarray:
        """Cosine of each text's ONNX vector to ``model.encode``'s (float64 array of len(texts))."""
        ref = np.asarray(model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True), dtype=np.float64)
        got = self.encode(list(texts)).astype(np.float64)
        got = got / np.maximum(np.linalg.norm(got, axis=1, keepdims=True), 1e-12)
        return (ref * got).sum(axis=1)

    def _check(self, model, min_cosine: float) -> float:
        cos = self.cosines_to_torch(model, FIDELITY_SAMPLE)
        worst = float(cos.min())
        if not np.isfinite(worst) or worst < min_cosine:
            raise OnnxFidelityError(
                f"{self.path}: ONNX ({self.quantize}) query vectors drift from the torch model: "
                f"min cosine {worst:.4f} < {min_cosine} on {len(cos)} sample queries; use the torch backend"
            )
        return worst

    def groups(self, lengths: list[int]) -> list[list[int]]:
        """Indices of texts grouped for one ORT call each: sorted by token length, a group grows
        while its padded size stays within ``(1 + max_padding)`` x its real tokens and it holds
        at most ``max_group`` texts."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        out: list[list[int]] = []
        real = 0
        for i in order:
            n = lengths[i]
            g = out[-1] if out else None
            # sorted ascending: the newcomer is the longest, so the group pads to n
            if g is not None and len(g) < self.max_group and n * (len(g) + 1) <= (1 + self.max_padding) * (real + n):
                g.append(i)
                real += n
            else:
                out.append([i])
                real = n
        return out

    def _feed(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for r, x in enumerate(ids):
            sl = slice(width - len(x), width) if self.pad_left else slice(0, len(x))
            input_ids[r, sl] = x
            mask[r, sl] = 1
        arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return {n: arrays[n] for n in self.input_names}

    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts -> float32 array (n, dim), rows in input order.

        Texts are truncated to the model's ``max_seq_length`` tokens and run in length groups
        (see :meth:`groups`), each one ORT call padded to its longest member.

        Args:
            texts: n strings (n >= 1).

        Raises:
            ValueError: no texts.
        """
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to encode")
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)["input_ids"]
        if len(ids) == 1:
            emb = self.session.run(None, self._feed(ids))[0]
        else:
            emb = None
            for g in self.groups([len(x) for x in ids]):
                part = self.session.run(None, self._feed([ids[i] for i in g]))[0]
                if emb is None:
                    emb = np.empty((len(ids), part.shape[1]), dtype=np.float32)
                emb[g] = part
        emb = np.asarray(emb, dtype=np.float32)
        if self.normalize:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(emb, dtype=np.float32)
