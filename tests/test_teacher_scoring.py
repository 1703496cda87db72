"""The offline scoring job: shards, manifest, resume after SIGKILL, corrupt shards, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrieval_distill.data.collections import DataFormatError
from retrieval_distill.evaluation.runs import read_run
from retrieval_distill.teachers.scoring import (
    Candidates,
    ScoreFileMismatch,
    load_manifest,
    read_candidates,
    read_scores,
    score_candidates,
)

PROJECT = Path(__file__).resolve().parents[1]
SPEC = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2"}


@pytest.fixture(scope="module")
def teacher():
    from retrieval_distill.teachers import build_teacher

    return build_teacher(SPEC)


def _pairs(df: pd.DataFrame) -> list[tuple]:
    return list(zip(df.qid, df.docid, df.teacher))


def test_read_candidates_formats(tmp_path):
    trec = tmp_path / "c.trec"
    trec.write_text("1 Q0 d1 1 3.0 x\n1 Q0 d2 2 2.0 x\n\n2 Q0 d1 1 1.0 x\n")
    c = read_candidates(trec)
    assert c.fmt == "trec" and c.pairs == {"1": ["d1", "d2"], "2": ["d1"]} and c.lines[("2", "d1")] == 4
    tri = tmp_path / "c.tsv"
    tri.write_text("1\td1\td2\n1\td1\td3\n")
    c = read_candidates(tri)
    assert c.fmt == "triples" and c.pairs == {"1": ["d1", "d2", "d3"]} and c.duplicates == 1
    hof = tmp_path / "h.tsv"
    hof.write_text("9.5\t1.25\t1\td1\td2\nx\t1\t1\td1\td3\n")
    with pytest.raises(DataFormatError, match=r"h.tsv:2: score 'x'"):
        read_candidates(hof)
    bad = tmp_path / "b.trec"
    bad.write_text("1 Q0 d1 1 3.0 x\n1 Q0 d2 2\n")
    with pytest.raises(DataFormatError, match=r"b.trec:2: expected 6 columns"):
        read_candidates(bad)


def test_scores_match_teacher_and_manifest(adi, adi_bm25_run, teacher, tmp_path):
    out = tmp_path / "s"
    m = score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, corpus_ids=adi.corpus, queries_per_shard=10, progress=False)
    run = read_run(adi_bm25_run[1])
    assert m["complete"] and m["n_shards"] == 4 and m["counts"]["pairs"] == 350 and m["counts"]["queries"] == 35
    assert m["teacher_fingerprint"] == teacher.fingerprint and m["scale"] == "cosine" and m["max_length"] == 256
    df = read_scores(out)
    assert list(df.columns) == ["qid", "docid", "score", "teacher"] and df.score.dtype == np.float32
    assert len(df) == 350 and not df.duplicated(["qid", "docid", "teacher"]).any()
    assert set(zip(df.qid, df.docid)) == {(q, d) for q, ds in run.items() for d in ds}
    # shard 0 holds the first 10 qids in string order, rows sorted by (qid, docid)
    import pyarrow.parquet as pq

    t0 = pq.read_table(out / "part-00000.parquet").to_pandas()
    assert sorted(set(t0.qid)) == sorted(run, key=str)[:10]
    assert list(zip(t0.qid, t0.docid)) == sorted(zip(t0.qid, t0.docid))
    # the stored scores are the teacher's cosines
    q = df.qid.iloc[0]
    sub = df[df.qid == q]
    direct = teacher.score([adi.queries[q]] * len(sub), [adi.doc_text(d) for d in sub.docid])
    np.testing.assert_allclose(sub.score.to_numpy(), direct, atol=1e-5)
    # rerun: nothing to do, same bytes, the manifest included (a finished folder is not written)
    before = {p.name: p.read_bytes() for p in [*out.glob("part-*.parquet"), out / "manifest.json"]}
    m2 = score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, corpus_ids=adi.corpus, queries_per_shard=10, progress=False)
    assert m2["last_run"]["new_pairs"] == 0 and m2["complete"] and m2["completed_shards"] == m["completed_shards"]
    assert before == {p.name: p.read_bytes() for p in [*out.glob("part-*.parquet"), out / "manifest.json"]}
    # the same candidates at another path: still nothing scored, and the manifest names the new path
    import shutil

    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / Path(adi_bm25_run[1]).name  # the fingerprint reads the name and the bytes
    shutil.copy(adi_bm25_run[1], moved)
    m3 = score_candidates(teacher, moved, adi.queries, adi.doc_text, out, corpus_ids=adi.corpus, queries_per_shard=10, progress=False)
    assert m3["last_run"]["new_pairs"] == 0 and m3["candidates"] == str(moved.resolve())
    assert load_manifest(out)["candidates"] == str(moved.resolve())
    assert {k: v for k, v in before.items() if k != "manifest.json"} == {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}


def test_rerun_into_a_finished_read_only_folder_is_a_no_op(adi, adi_bm25_run, teacher, tmp_path, monkeypatch):
    """A finished score folder on storage this user cannot write (simulated: the tests run as
    root, which chmod does not stop) is verified and reused; a damaged one is still redone."""
    import retrieval_distill.teachers.scoring as scoring

    out = tmp_path / "s"
    kw = dict(corpus_ids=adi.corpus, queries_per_shard=10, progress=False)
    score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(out / "manifest.json"))

    monkeypatch.setattr(scoring, "write_json_atomic", refuse)
    m = score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)
    assert m["complete"] and m["last_run"]["new_pairs"] == 0 and len(read_scores(out)) == 350
    # the same candidates moved elsewhere: still reused; the new path cannot be recorded here
    import shutil

    (tmp_path / "moved").mkdir()
    shutil.copy(adi_bm25_run[1], tmp_path / "moved")
    m = score_candidates(teacher, tmp_path / "moved" / Path(adi_bm25_run[1]).name, adi.queries, adi.doc_text, out, **kw)
    assert m["complete"] and m["last_run"]["new_pairs"] == 0 and m["candidates"] == str(Path(adi_bm25_run[1]).resolve())
    # a shard whose bytes changed is not trusted: the job goes on to redo it (and here, where
    # nothing may be written, fails on its first write instead of returning stale scores)
    p = out / "part-00001.parquet"
    p.write_bytes(p.read_bytes()[:-1] + b"x")
    with pytest.raises(PermissionError):
        score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)


def test_hand_edited_manifest_and_strays_in_a_finished_folder(adi, adi_bm25_run, teacher, tmp_path):
    """A finished folder with a stray temporary file, a manifest entry for a shard this request
    does not plan, a string "complete", or a directory where a shard belongs: each is healed or
    refused in one line, never a folder that stays incomplete or a traceback."""
    out = tmp_path / "s"
    kw = dict(corpus_ids=adi.corpus, queries_per_shard=10, progress=False)
    score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)
    good = read_scores(out)
    (out / ".part-00001.parquet.abc.tmp").write_bytes(b"junk")
    score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)
    assert not list(out.glob(".*.tmp"))  # removed even though nothing was scored
    mpath = out / "manifest.json"
    m = json.loads(mpath.read_text())
    m["completed_shards"]["part-00099.parquet"] = m["completed_shards"].pop("part-00003.parquet")
    m["complete"] = "false"
    mpath.write_text(json.dumps(m))
    m2 = score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)
    assert m2["complete"] is True and sorted(m2["completed_shards"]) == [f"part-{i:05d}.parquet" for i in range(4)]
    assert m2["last_run"]["new_pairs"] == 0  # part-00003 adopted (its bytes check out), not rescored
    pd.testing.assert_frame_equal(read_scores(out), good)
    (out / "part-00002.parquet").unlink()
    (out / "part-00002.parquet").mkdir()
    with pytest.raises(ScoreFileMismatch, match="a directory where a shard file belongs"):
        score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)


def test_corrupt_shard_is_redone_and_mismatch_refused(adi, adi_bm25_run, teacher, tmp_path):
    out = tmp_path / "s"
    kw = dict(corpus_ids=adi.corpus, queries_per_shard=10, progress=False)
    score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)
    good = read_scores(out)
    p = out / "part-00002.parquet"
    p.write_bytes(p.read_bytes()[:100])  # a crash-truncated shard
    (out / ".part-00003.parquet.abc.parquet.tmp").write_bytes(b"junk")  # stray temp file
    m = score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)
    assert m["counts"]["redone_shards"] == 1 and m["last_run"]["new_pairs"] == 100
    assert not list(out.glob(".*.tmp"))
    pd.testing.assert_frame_equal(read_scores(out), good)
    # another teacher (different fingerprint) into the same folder: refused, then overwritten
    other = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "options": {"max_length": 64}}
    with pytest.raises(ScoreFileMismatch, match="teacher_fingerprint"):
        score_candidates(other, adi_bm25_run[1], adi.queries, adi.doc_text, out, **kw)
    m = score_candidates(other, adi_bm25_run[1], adi.queries, adi.doc_text, out, overwrite=True, **kw)
    assert m["complete"] and m["max_length"] == 64
    # different candidates -> refused too
    cands = Candidates.from_pairs([("1", "17"), ("1", "46")])
    with pytest.raises(ScoreFileMismatch, match="candidates_fingerprint"):
        score_candidates(other, cands, adi.queries, adi.doc_text, out, **kw)


def test_bad_input_is_reported(adi, teacher, tmp_path):
    cand = tmp_path / "c.trec"
    cand.write_text("1 Q0 17 1 1.0 x\n1 Q0 46 2 0.5 x\n2 Q0 999999 1 1.0 x\n")
    with pytest.raises(DataFormatError, match=r"c.trec:3: unknown docid '999999'"):
        score_candidates(teacher, cand, adi.queries, adi.doc_text, tmp_path / "o", corpus_ids=adi.corpus, progress=False)
    cand.write_text("1 Q0 17 1 1.0 x\nq-x Q0 46 2 0.5 x\n")
    with pytest.raises(DataFormatError, match=r"c.trec:2: unknown qid 'q-x'"):
        score_candidates(teacher, cand, adi.queries, adi.doc_text, tmp_path / "o", corpus_ids=adi.corpus, progress=False)
    # an empty passage and an over-long query: scored, counted, never dropped
    docs = {"17": adi.doc_text("17"), "46": "   "}
    queries = {"1": adi.queries["1"], "2": " ".join(["retrieval"] * 300)}
    cands = Candidates.from_pairs([("1", "17"), ("1", "46"), ("2", "17")])
    m = score_candidates(teacher, cands, queries, docs, tmp_path / "o2", progress=False)
    assert m["counts"]["empty_passages"] == 1 and m["counts"]["empty_passage_examples"] == [["1", "46"]]
    assert m["counts"]["queries_over_max_length"] == 1
    assert len(read_scores(tmp_path / "o2")) == 3


def test_sigkill_mid_run_then_resume_is_exactly_once(adi, adi_bm25_run, teacher, tmp_path):
    """Run `rd teacher score` in a real subprocess, SIGKILL it after a few shards, rerun it,
    and compare with an uninterrupted run: every (qid, docid, teacher) once, same scores."""
    out = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "retrieval_distill", "teacher", "score",
        "--teacher", json.dumps(SPEC), "--candidates", str(adi_bm25_run[1]),
        "--dataset", str(adi.root), "--split", "test", "--output", str(out),
        "--queries-per-shard", "2", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("part-*.parquet"))) < 3:
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be killed: " + proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_killed = len(list(out.glob("part-*.parquet")))
    assert 3 <= n_killed < 18, n_killed
    with pytest.raises(Exception, match="shards done"):
        read_scores(out)  # incomplete
    res = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "18/18 shards" in res.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["last_run"]["new_pairs"] <= 350 - 20 * 3 + 20  # skipped the finished shards
    resumed = read_scores(out)
    # uninterrupted run (in-process) for comparison
    ref_dir = tmp_path / "ref"
    score_candidates(teacher, adi_bm25_run[1], adi.queries, adi.doc_text, ref_dir, corpus_ids=adi.corpus, queries_per_shard=2, progress=False)
    ref = read_scores(ref_dir)
    assert len(resumed) == 350 and not resumed.duplicated(["qid", "docid", "teacher"]).any()
    assert _pairs(resumed) == _pairs(ref)
    np.testing.assert_allclose(resumed.score.to_numpy(), ref.score.to_numpy(), atol=1e-6)


def test_a_second_scoring_job_on_a_busy_folder_is_refused_and_a_killed_holder_frees_it(adi, adi_bm25_run, tmp_path):
    """Two `rd teacher score` jobs into one folder would race on its manifest: while another
    process holds the folder's lock the second exits 2 naming the holder's pid and writes
    nothing; once the holder is SIGKILLed the kernel frees the lock and the job runs."""
    out = tmp_path / "busy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom retrieval_distill.utils import folder_lock\n"
         f"with folder_lock({str(out)!r}, 'a scoring job'):\n    print('held', flush=True)\n    time.sleep(600)"],
        cwd=PROJECT, env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    cmd = [sys.executable, "-m", "retrieval_distill", "teacher", "score", "--teacher", json.dumps(SPEC),
           "--candidates", str(adi_bm25_run[1]), "--dataset", str(adi.root), "--split", "test",
           "--output", str(out), "--no-progress"]
    try:
        res = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
        assert f"already writing this folder (pid {holder.pid}" in res.stderr and "Traceback" not in res.stderr
        assert not list(out.glob("part-*.parquet")) and not (out / "manifest.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    res = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert len(read_scores(out)) == 350


def test_score_cli_reports_bad_input_in_one_line(adi, tmp_path):
    """`rd teacher score` on bad input: exit 2 and one `error: file:line: ...` line, not a
    traceback; no score folder is left behind."""
    from typer.testing import CliRunner

    from retrieval_distill.cli import app

    cand = tmp_path / "c.trec"
    base = ["teacher", "score", "-t", "bi_encoder:all-MiniLM-L6-v2", "--dataset", str(adi.root), "--split", "test",
            "--candidates", str(cand), "-o", str(tmp_path / "o"), "--no-progress"]  # fmt: skip
    for text, msg in (("1 Q0 17 1 1.0 x\n2 Q0 nosuchdoc 1 1.0 x\n", "c.trec:2: unknown docid 'nosuchdoc'"),
                      ("1 Q0 17 1 1.0 x\nbad line\n", "c.trec:2: expected 6 columns")):  # fmt: skip
        cand.write_text(text)
        r = CliRunner().invoke(app, base)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
    cand.write_text("1 Q0 17 1 1.0 x\n")
    r = CliRunner().invoke(app, base[:3] + ["bi_encoder:" + str(tmp_path / "no-model")] + base[4:])
    assert r.exit_code == 2 and "error: model" in r.output and "not found" in r.output, r.output
    assert not (tmp_path / "o").exists()
    # an output folder whose `.lock` is a directory, or a symbolic link (never followed): one line
    (tmp_path / "o" / ".lock").mkdir(parents=True)
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 2 and ".lock: a directory, not a lock file" in r.output and "Traceback" not in r.output, r.output
    (tmp_path / "o" / ".lock").rmdir()
    (tmp_path / "o" / ".lock").symlink_to(tmp_path / "elsewhere")
    r = CliRunner().invoke(app, base)
    assert r.exit_code == 2 and ".lock: a symbolic link, not a lock file" in r.output, r.output
    assert not (tmp_path / "elsewhere").exists() and not list((tmp_path / "o").glob("part-*"))
    (tmp_path / "a-file").write_text("x")
    r = CliRunner().invoke(app, base[:-3] + ["-o", str(tmp_path / "a-file"), "--no-progress"])
    assert r.exit_code == 2 and "a-file: a file, not a folder" in r.output and "Traceback" not in r.output, r.output
