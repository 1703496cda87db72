"""Atomic writes (retrieval_distill.utils): what a reader sees when a writer fails mid-way, and symlinks."""

from __future__ import annotations

import os

import pytest

from retrieval_distill.utils import atomic_path, write_text_atomic


def test_atomic_write_keeps_old_file_on_error_and_its_mode(tmp_path):
    f = tmp_path / "report.md"
    write_text_atomic(f, "v1\n")
    os.chmod(f, 0o640)
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_text("half")
            raise RuntimeError("failed mid-write")
    assert f.read_text() == "v1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]  # no stray temporary file
    write_text_atomic(f, "v2\n")
    assert f.read_text() == "v2\n" and (f.stat().st_mode & 0o777) == 0o640  # replaced file keeps its mode


def test_atomic_write_replaces_a_symlink_never_its_target(tmp_path):
    shared = tmp_path / "shared.jsonl"  # stands for ../shared/data, which must stay read-only
    shared.write_text("original\n")
    link = tmp_path / "work" / "queries.jsonl"
    link.parent.mkdir()
    link.symlink_to(shared)
    write_text_atomic(link, "rewritten\n")
    assert shared.read_text() == "original\n"
    assert not link.is_symlink() and link.read_text() == "rewritten\n"
