"""Corpus encoding as a Ray Data job over the same shard files as the local backend.

:func:`retrieval_distill.index.build.encode_corpus` decides which shards are missing
(same ``encoding.json`` key, same SHA-256 checks, same resume rules); with
``backend="ray"`` it hands those shard numbers to :func:`encode_shards_ray`, which runs
one Ray Data ``map_batches`` task per shard on a pool of actors, each actor holding one
copy of the document encoder. Every actor encodes exactly the documents
``texts[start:end]`` of its shard with the same model, ``batch_size``, ``max_seq_length``
and normalisation as the local backend, and writes ``emb-NNNNN.npy`` atomically itself,
so the output files are the same (same boundaries, same batches, same bytes on the same
hardware) and a killed Ray job resumes exactly like a killed local one.

Needs the ``scale`` extra (``pip install 'retrieval-distill[scale]'``). On a cluster,
``out_dir`` must be on storage every worker can write (a shared volume); locally,
``ray.init()`` starts a one-machine cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from retrieval_distill.models.encoder import Encoder


class _ShardEncoder:
    """A Ray actor: loads the encoder once, encodes and writes whole shards."""

    def __init__(self, model: str, batch_size: int, max_length: int | None, normalize: bool, texts_ref, out_dir: str,
                 dtype: str = "fp32"):
        import ray

        from retrieval_distill.models.encoder import Encoder

        self.encoder = Encoder(model, batch_size=batch_size, max_length=max_length, normalize=normalize, show_progress=False,
                               dtype=dtype, force_bf16=True)  # the driver's encoder already chose dtype for this CPU
        self.texts = ray.get(texts_ref[0]) if isinstance(texts_ref, list) else texts_ref
        self.out = Path(out_dir)

    def __call__(self, batch: dict) -> dict:
        from retrieval_distill.index.build import write_shard

        names, rows, digests = [], [], []
        for i, s, e in zip(batch["shard"], batch["start"], batch["end"]):
            name, n, digest = write_shard(self.out, int(i), self.encoder.encode_documents(self.texts[int(s):int(e)]))
            names.append(name)
            rows.append(n)
            digests.append(digest)
        return {"name": np.array(names), "rows": np.array(rows), "sha256": np.array(digests)}


def encode_shards_ray(
    encoder: "Encoder",
    texts: list[str],
    bounds: list[tuple[int, int]],
    todo: list[int],
    out_dir: str | Path,
    num_actors: int | None = None,
) -> Iterator[tuple[str, int, str]]:
    """Encode shards ``todo`` (``bounds[i] = (start, end)`` rows) with Ray Data actors.

    Args:
        encoder: the local encoder; its model name and settings are sent to the actors
            (each loads its own copy; the weights never travel through Ray).
        texts: all document texts of the corpus.
        bounds: row range of every shard.
        todo: shard numbers to encode.
        out_dir: the encoding folder.
        num_actors: actor pool size (default: Ray's CPU count, at most ``len(todo)``).

    Yields:
        ``(shard file name, rows, sha256)`` for every shard written, in completion order.

    Raises:
        ImportError: Ray is not installed (``pip install 'retrieval-distill[scale]'``).
    """
    try:
        import ray
    except ImportError:
        raise ImportError("backend='ray' needs Ray Data: pip install 'retrieval-distill[scale]'") from None
    if not todo:
        return
    if not ray.is_initialized():
        from retrieval_distill.scale.ray_local import init_local

        init_local(log_to_driver=False, include_dashboard=False)
    model = getattr(encoder, "model_name", None)
    if model is None:
        raise ValueError("backend='ray' needs an Encoder with a model_name (the actors load the model themselves)")
    max_length = getattr(getattr(encoder, "doc_model", None), "max_seq_length", None)
    items = [{"shard": i, "start": bounds[i][0], "end": bounds[i][1]} for i in todo]
    pool = num_actors or max(1, min(len(todo), int(ray.available_resources().get("CPU", 1))))
    texts_ref = [ray.put(list(texts))]  # wrapped in a list so Ray passes the reference, not the value
    ds = ray.data.from_items(items).map_batches(
        _ShardEncoder,
        fn_constructor_args=(model, int(getattr(encoder, "batch_size", 32)), max_length,
                             bool(getattr(encoder, "normalize", True)), texts_ref, str(out_dir),
                             str(getattr(encoder, "dtype", "fp32"))),
        batch_size=1,
        concurrency=pool,
        num_cpus=1,
    )
    for row in ds.iter_rows():
        yield str(row["name"]), int(row["rows"]), str(row["sha256"])
