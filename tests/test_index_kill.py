"""SIGKILL a rebuild (subprocess) while it encodes and while it writes a version: the
previous version stays current, loads and answers unchanged; the next run resumes and
cleans the half-written folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

import index_support as S
from retrieval_distill.index.rebuild import rebuild
from retrieval_distill.index.store import TMP_RE, IndexStore
from retrieval_distill.search.dense import DenseSearcher

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(S.PROJECT))

WRITER = """
import sys, numpy as np
from retrieval_distill.index.build import build_index
from retrieval_distill.index.store import IndexStore
store = IndexStore(sys.argv[1], keep=5)
emb = np.random.default_rng(1).standard_normal((int(sys.argv[2]), 384), dtype=np.float32)
v = build_index(emb, [f"syn{i}" for i in range(len(emb))], store.new_version_dir("big"),
                manifest_extra={"encoder": {"name": "all-MiniLM-L6-v2", "fingerprint": sys.argv[3]}})
store.publish(v)
"""


def _wait_for(proc: subprocess.Popen, cond, timeout: float = 300.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def _answers(root: Path):
    s = DenseSearcher(root, S.encoder())
    return s.version.version_id, s.batch_search(S.adi().queries, k=10)


def _published_store(tmp_path: Path):
    S.adi_encoded()
    spec = S.spec(tmp_path)
    first = rebuild(spec, log=lambda s: None).version
    return spec, first


def test_sigkill_while_encoding_keeps_previous_version_and_resumes(tmp_path):
    spec, first = _published_store(tmp_path)
    before = _answers(spec.root)
    # the same index rebuilt with a fresh encoding cache, so the killed job is mid-encoding
    fresh = tmp_path / "fresh-encodings"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(dict(spec.model_dump(), encodings=str(fresh))))
    proc = subprocess.Popen([sys.executable, "-m", "retrieval_distill.cli", "index", "rebuild", str(spec_file), "--full"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got = _wait_for(proc, lambda: any(fresh.glob("*/emb-00001.npy")))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert got, "the rebuild finished or failed before two shards were written"
    store = IndexStore(spec.root)
    assert store.current_id() == first.version_id
    assert _answers(spec.root) == before  # previous version loads and answers unchanged
    folder = next(fresh.glob("*/"))
    done = {p.name: p.stat().st_mtime_ns for p in folder.glob("emb-*.npy")}
    assert 2 <= len(done) < 6

    r = rebuild(dict_spec(spec, encodings=str(fresh)), force_full=True, log=lambda s: None)
    assert r.decision.action == "full" and r.version.version_id != first.version_id
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("emb-*.npy") if p.name in done} == done  # not re-encoded
    assert len(list(folder.glob("emb-*.npy"))) == 6
    np.testing.assert_allclose(r.version.index.reconstruct_n(0, 82), S.adi_encoded()[1], atol=1e-5)
    assert _answers(spec.root)[1] == before[1]


def dict_spec(spec, **kw):
    return type(spec)(**dict(spec.model_dump(), **kw))


def test_sigkill_while_writing_a_version_leaves_previous_current(tmp_path):
    spec, first = _published_store(tmp_path)
    before = _answers(spec.root)
    store = IndexStore(spec.root)
    fp = first.manifest.encoder.fingerprint

    def tmp_dirs():
        return [p for p in store.versions_dir.iterdir() if TMP_RE.match(p.name)]

    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(spec.root), "40000", fp], env=ENV)
    try:
        got = _wait_for(proc, lambda: any((p / "index.faiss").exists() for p in tmp_dirs()))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert got, "the writer finished before its version folder was seen half-written"
    assert store.current_id() == first.version_id
    assert _answers(spec.root) == before
    half = store.half_written()
    assert len(half) == 1 and TMP_RE.match(half[0].name) and not (half[0] / "manifest.json").exists()
    assert [v.version_id for v in store.versions()] == [first.version_id]  # the killed version never became complete

    # the next run detects and removes the dead writer's folder, then works as usual
    lines = []
    r = rebuild(spec, log=lines.append)
    assert lines[0] == f"cleanup: removed {half[0]}" and r.decision.action == "noop"
    assert store.half_written() == []
