"""The whole pipeline on ADI (82 docs): every stage runs, writes its files, and a rerun skips."""

import json
from pathlib import Path

import pytest
import yaml

from conftest import ADI


@pytest.fixture(scope="module")
def adi_split(tmp_path_factory):
    """ADI as a BEIR folder with a train/test qrels split (first 20 judged queries train)."""
    root = tmp_path_factory.mktemp("adi-split")
    (root / "qrels").mkdir()
    (root / "corpus.jsonl").symlink_to(ADI / "corpus.jsonl")
    (root / "queries.jsonl").symlink_to(ADI / "queries.jsonl")
    lines = (ADI / "qrels" / "test.tsv").read_text().splitlines()
    header, rows = lines[0], lines[1:]
    qids = list(dict.fromkeys(r.split("\t")[0] for r in rows))
    train = set(qids[:20])
    (root / "qrels" / "train.tsv").write_text("\n".join([header] + [r for r in rows if r.split("\t")[0] in train]) + "\n")
    (root / "qrels" / "test.tsv").write_text("\n".join([header] + [r for r in rows if r.split("\t")[0] not in train]) + "\n")
    return root


def test_pipeline_end_to_end_on_adi(adi_split, tmp_path):
    from retrieval_distill.config import load_config
    from retrieval_distill.pipeline import Pipeline

    cfg_path = tmp_path / "adi.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "adi",
        "dataset": str(adi_split),
        "work_dir": str(tmp_path / "work"),
        "splits": {"dev_size": 5, "seed": 1},
        "candidates": {"bm25_k": 20, "dense_k": 20},
        "teacher": {"weight_grid": [0.0, 0.5, 1.0], "shard_queries": 4, "members": [
            {"kind": "bm25", "name": "bm25"},
            {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "name": "minilm"},
        ]},
        "train": {"losses": [{"name": "margin_mse", "options": {"teacher_scale": 0.1}}], "n_negatives": 2,
                  "negative_depth": 10, "epochs": 1, "batch_size": 4, "max_seq_length": 64, "save_steps": 1000},
        "index": {"factories": ["Flat", "HNSW32"]},
        "eval": {"report": str(tmp_path / "report.md")},
    }))
    lines: list[str] = []
    cfg = load_config(cfg_path)
    result = Pipeline(cfg, echo=lines.append).run()

    work = tmp_path / "work"
    splits = json.loads((work / "splits.json").read_text())
    assert len(splits["dev"]) == 5 and len(splits["train"]) == 15 and not set(splits["dev"]) & set(splits["train"])
    # every system has test metrics in [0, 1], on the 15 judged test queries
    for system in ("bm25", "init", "teacher", "student"):
        m = result["test"][system]
        assert 0.0 <= m["ndcg@10"] <= 1.0 and m["n_judged"] == 15
    # the teacher reranks the candidates; its dev weights were chosen and recorded
    ens = json.loads((work / "teacher" / "ensemble.json").read_text())
    assert len(ens["spec"]["weights"]) == 2 and sum(ens["spec"]["weights"]) > 0
    card = json.loads((work / "models" / "student" / "training_card.json").read_text())
    assert card["teacher_fingerprint"] and card["steps"] > 0 and card["examples"] > 0
    assert (work / "index" / "flat" / "CURRENT").exists() and (work / "index" / "hnsw32" / "CURRENT").exists()
    report = Path(tmp_path / "report.md").read_text()
    assert "nDCG@10" in report and "rd pipeline" in report
    assert any(line.startswith("total wall time") for line in lines)
    # the run ends with the TEST table (its heading names the config), not dev's
    table = lines[-1]
    assert table.startswith("\n## adi test (15 judged queries)") and "adi dev" not in table
    student_row = next(r for r in table.splitlines() if r.startswith("| student "))
    assert f"{result['test']['student']['ndcg@10']:.4f}" in student_row

    # a second run finds every stage up to date
    again = Pipeline(load_config(cfg_path), echo=lines.append)
    again.run()
    assert again.skipped == set(Pipeline.STAGES)
    # changing the training config reruns train and everything after it, not before
    cfg2 = load_config(cfg_path)
    cfg2.train.lr = 3e-5
    third = Pipeline(cfg2, echo=lines.append)
    third.run()
    assert third.skipped == {"splits", "bm25", "init", "candidates", "teacher"}
