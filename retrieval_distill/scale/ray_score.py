"""Ray Data backend of the teacher scoring job (``rd teacher score --backend ray``).

The same shard plan as the local backend (:mod:`retrieval_distill.teachers.scoring`) runs
as a Ray Data ``map_batches`` over shard rows, one shard per batch, in a pool of actors
that each build the teacher once (and load the document-state chunks the driver already
wrote). An actor scores a shard with the same code as the local backend and writes the
Parquet file itself, atomically, with the same writer settings, so the files are
byte-identical to the local backend's; the driver records each finished shard in the
manifest as results stream back, so the resume rules are the same too.

Locally (``ray.init`` is called here when no cluster is connected) Ray starts on
127.0.0.1 with ``num_cpus`` CPUs, no dashboard and usage stats off; the default pool is
1 actor x ``num_cpus`` CPUs: on a 2-core machine more actors than cores deadlock
(each actor would wait for CPUs that never free). On a cluster, connect first
(``ray.init(address=...)``) and raise ``actors``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from retrieval_distill.scale.ray_local import init_local, shutdown_local


class ShardScorer:
    """Ray Data actor: builds the teacher once, scores and writes one shard per call."""

    def __init__(self, spec: dict, teacher_name: str, out_dir: str, doc_chunks: list, threads: int,
                 queries: dict | None = None):
        import torch

        from retrieval_distill.teachers.base import build_teacher
        from retrieval_distill.teachers.scoring import load_document_state

        torch.set_num_threads(threads)
        self.teacher = build_teacher(spec)
        if queries and callable(getattr(self.teacher, "check_queries", None)):
            self.teacher.check_queries([], queries)  # the collection's texts, as the local path gives them (cross_fit twins)
        if doc_chunks:
            load_document_state(self.teacher, [(p, list(ids)) for p, ids in doc_chunks])
        self.name = teacher_name
        self.out = Path(out_dir)

    def __call__(self, batch: dict) -> dict:
        from retrieval_distill.teachers.scoring import Shard, score_shard, shard_name, write_shard

        idx_out, sha_out = [], []
        for k in range(len(batch["index"])):
            s = Shard(int(batch["index"][k]), list(batch["qids"][k]), list(batch["docids"][k]), list(batch["queries"][k]), list(batch["passages"][k]))
            sha = write_shard(score_shard(self.teacher, s, self.name), self.out / shard_name(s.index))
            idx_out.append(s.index)
            sha_out.append(sha)
        return {"index": idx_out, "sha": sha_out}


def score_shards_ray(
    spec, shards: list, teacher_name: str, out_dir: str | os.PathLike, doc_chunks: list | None = None, num_cpus: int = 2, actors: int = 1,
    queries: dict | None = None,
) -> Iterator[tuple[int, str]]:
    """Score ``shards`` with Ray Data; yields ``(shard index, sha256)`` as shards finish.

    Args:
        spec: the teacher spec (a :class:`TeacherSpec` or dict).
        shards: :class:`~retrieval_distill.teachers.scoring.Shard` objects to score.
        teacher_name: value of the ``teacher`` column.
        out_dir: the score folder (actors write ``part-NNNNN.parquet`` into it).
        doc_chunks: document-state chunks ``[(path, docids)]`` written by the driver.
        num_cpus: CPUs of a local Ray instance and of each actor.
        actors: actor pool size (keep ``actors * num_cpus`` <= the cores).
        queries: qid -> text of the collection, handed to each actor's teacher
            ``check_queries`` (a ``cross_fit`` teacher finds twins among them, as locally).
    """
    import ray

    if not shards:
        return
    spec = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    started = False
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        init_local(
            num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
            configure_logging=False, ignore_reinit_error=True,
            # workers import torch and transformers: on a loaded 2-core machine that exceeds
            # Ray's default 60 s registration timeout and Ray restarts them in a loop
            _system_config={"worker_register_timeout_seconds": 600},
            runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                                      "TOKENIZERS_PARALLELISM": "false"}},
        )  # fmt: skip
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = False
        items = [
            {"index": s.index, "qids": s.qids, "docids": s.docids, "queries": s.queries, "passages": s.passages} for s in shards
        ]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        res = ds.map_batches(
            ShardScorer,
            fn_constructor_kwargs={"spec": spec, "teacher_name": teacher_name, "out_dir": str(Path(out_dir).resolve()),
                                   "doc_chunks": doc_chunks or [], "threads": num_cpus, "queries": queries},
            batch_size=1, concurrency=actors, num_cpus=num_cpus, batch_format="numpy",
        )  # fmt: skip
        for row in res.iter_rows():
            yield int(row["index"]), str(row["sha"])
    finally:
        if started:
            shutdown_local()
