"""eval/configs/query_side/cross_fit.py: the folds partition the train queries (dev never among
them), each fold config excludes dev plus its own fold, every file validates as the config it
claims (StudentJob, TeacherSpec) and the output is the same for the same seed."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from script_support import load_script


def _script():
    return load_script("eval/configs/query_side/cross_fit.py")


def _lines(p: Path) -> list[str]:
    return [x for x in p.read_text().splitlines() if x]


def test_folds_partition_the_train_queries_and_configs_validate(tmp_path):
    from retrieval_distill.distill.job import StudentJob
    from retrieval_distill.teachers.base import TeacherSpec

    work = tmp_path / "demo"
    (work / "candidates").mkdir(parents=True)
    (work / "splits").mkdir()
    train = [f"q{i}" for i in range(11)]
    (work / "candidates" / "train.trec").write_text("".join(f"{q} Q0 d{j} {j + 1} {1.0 - j / 10} init\n" for q in train for j in range(3)))
    (work / "splits" / "dev.qids").write_text("dev1\ndev2\n")
    _script().main(["--work", str(work), "--folds", "3", "--epochs", "6", "--out", str(tmp_path / "cf")])
    out = tmp_path / "cf"
    held = []
    for i in range(3):
        trained = _lines(out / f"fold{i}.trained.qids")
        excluded = _lines(out / f"fold{i}.exclude.qids")
        assert excluded[:2] == ["dev1", "dev2"] and set(trained) | set(excluded[2:]) == set(train)
        assert not set(trained) & set(excluded)
        held.append(set(excluded[2:]))
        job = StudentJob(**yaml.safe_load((out / f"fold{i}.yaml").read_text()))
        assert job.mode == "query_side" and job.train.epochs == 6 and [l.name for l in job.train.losses] == ["corpus_infonce"]
        assert job.exclude_qids_file == str(out / f"fold{i}.exclude.qids") and job.dev.keep == "best"
    assert sorted(len(h) for h in held) == [3, 4, 4] and set().union(*held) == set(train)  # each query held out once
    teacher = TeacherSpec.model_validate(json.loads((out / "teacher.json").read_text()))
    folds = teacher.members[1].options["cross_fit"]
    assert [f["trained_qids"] for f in folds] == [str(out / f"fold{i}.trained.qids") for i in range(3)]
    student = StudentJob(**yaml.safe_load((out / "student.yaml").read_text()))
    assert student.teacher == teacher.name == "bm25+baseline-cf3" and student.scores == str(out / "scores")
    assert [l.name for l in student.train.losses] == ["corpus_infonce", "listwise_kl"] and student.train.epochs == 12
    ba = TeacherSpec.model_validate(json.loads((out / "born-again.json").read_text()))
    assert ba.members[1].options["query_model"] == str(work / "models" / "baseline")
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    _script().main(["--work", str(work), "--folds", "3", "--epochs", "6", "--out", str(out)])
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == first


def test_bad_work_folders_are_refused_before_writing_anything(tmp_path):
    """A dev qid in the first column with a note after it (the qids format) still counts as
    dev: it is refused as overlapping train, not cut into a fold; more folds than train
    queries, and a missing work folder, end with a message and write no output folder."""
    import pytest

    work = tmp_path / "demo"
    (work / "candidates").mkdir(parents=True)
    (work / "splits").mkdir()
    (work / "candidates" / "train.trec").write_text("".join(f"q{i} Q0 d0 1 1.0 init\n" for i in range(3)))
    out = tmp_path / "cf"
    (work / "splits" / "dev.qids").write_text("\ufeffdev1\nq1\tdev\n")
    with pytest.raises(SystemExit, match="dev queries among the train candidate lists .*'q1'"):
        _script().main(["--work", str(work), "--folds", "2", "--out", str(out)])
    (work / "splits" / "dev.qids").write_text("\ufeffdev1 note\n")
    with pytest.raises(SystemExit, match="3 train queries cannot fill --folds 4"):
        _script().main(["--work", str(work), "--folds", "4", "--out", str(out)])
    with pytest.raises(SystemExit, match="not found"):
        _script().main(["--work", str(tmp_path / "nowhere"), "--out", str(out)])
    assert not out.exists()
    _script().main(["--work", str(work), "--folds", "3", "--out", str(out)])
    assert _lines(out / "fold0.exclude.qids")[0] == "dev1"  # the qid alone, BOM and note dropped
