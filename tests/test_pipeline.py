"""The whole pipeline on ADI (82 docs): every stage runs, writes its files, and a rerun skips."""

import json
import re
import time
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
    assert card["teacher"]["fingerprint"] and card["steps"] > 0 and card["examples"] > 0
    assert (work / "index" / "flat" / "CURRENT").exists() and (work / "index" / "hnsw32" / "CURRENT").exists()
    report = Path(tmp_path / "report.md").read_text()
    assert "nDCG@10" in report and "rd pipeline" in report
    # the title names the dataset too (a config reused on another dataset with --set dataset=)
    assert report.startswith(f"# adi: distillation results on {adi_split} (base profile)")
    w = ens["spec"]["weights"]
    assert f"Kept: `ensemble` (members and weights: bm25 {w[0]:g}, minilm {w[1]:g}; normalization zscore)" in report
    assert any(line.startswith("total wall time") for line in lines)
    # the run ends with the TEST table (its heading names the config), not dev's
    table = lines[-2]
    assert lines[-1].startswith(f"\nreport: {tmp_path / 'report.md'}")
    assert table.startswith("\n## adi test (15 judged queries)") and "adi dev" not in table
    student_row = next(r for r in table.splitlines() if r.startswith("| student "))
    assert f"{result['test']['student']['ndcg@10']:.4f}" in student_row

    # a second run finds every stage up to date
    again = Pipeline(load_config(cfg_path), echo=lines.append)
    again.run()
    # every stage but `queries` (the dataset has training queries: no synthetic ones are made)
    # and not `baseline` (student.baseline is off: the stage does nothing and records nothing)
    assert again.skipped == set(Pipeline.STAGES) - {"queries", "baseline"} and "queries" not in again.timings
    assert "baseline" not in again.timings and "baseline" not in result
    # a skipped stage's time is the one of the run that made its outputs (the report marks it)
    assert again.timings["init"] == json.loads((work / "stamps" / "init.json").read_text())["seconds"] > 0
    # changing the training config reruns train and everything after it, not before
    cfg2 = load_config(cfg_path)
    cfg2.train.lr = 3e-5
    third = Pipeline(cfg2, echo=lines.append)
    third.run()
    assert third.skipped == {"splits", "bm25", "init", "candidates", "teacher"}

    # student.mode query_side: only the query tower trains, against the init's corpus vectors
    # the `init` stage computed; the index holds those same vectors (nothing re-encoded)
    from retrieval_distill.config import StudentConfig
    from retrieval_distill.distill.train import LossSpec
    from retrieval_distill.index.store import IndexStore

    cfg4 = load_config(cfg_path)
    cfg4.student = StudentConfig(mode="query_side", baseline=True)
    cfg4.train.losses = [LossSpec(name="corpus_infonce", options={"temperature": 0.05}),
                         LossSpec(name="listwise_kl", options={"teacher_temperature": 1.0, "student_temperature": 0.05})]
    cfg4.train.epochs = 2
    fourth = Pipeline(cfg4, echo=lines.append)
    res4 = fourth.run()
    assert fourth.skipped == {"splits", "bm25", "init", "candidates", "teacher"}
    card = json.loads((work / "models" / "student" / "training_card.json").read_text())
    init_key = json.loads((work / "embeddings" / "init" / "encoding.json").read_text())["key"]
    assert card["mode"] == "query_side" and card["documents_encoded"] == 0
    assert card["document_encoder"]["fingerprint"] == init_key["encoder_fingerprint"]
    assert card["teacher"]["name"] == "ensemble" and len(card["dev_per_epoch"]) == 3  # init + 2 epochs
    assert card["dev_selected"]["epoch"] in (1.0, 2.0)
    manifest = IndexStore(work / "index" / "flat").current().manifest
    assert manifest.encoder.fingerprint == init_key["encoder_fingerprint"]
    assert manifest.extra["student_mode"] == "query_side" and manifest.query_encoder.name == str(work / "models" / "student")
    assert 0.0 <= res4["test"]["student"]["ndcg@10"] <= 1.0 and res4["test"]["student"]["n_judged"] == 15
    # student.baseline: the same job without the teacher term (same queries, epochs, seed, dev
    # selection), tested against in the report
    bcard = json.loads((work / "models" / "baseline" / "training_card.json").read_text())
    assert [l["name"] for l in bcard["losses"]] == ["corpus_infonce"] and not bcard.get("teacher")
    assert bcard["steps"] == card["steps"] and bcard["examples"] == card["examples"] and bcard["documents_encoded"] == 0
    assert len(bcard["dev_per_epoch"]) == 3
    from retrieval_distill.evaluation.metrics import evaluate
    from retrieval_distill.evaluation.runs import read_run
    from retrieval_distill.data.collections import load_collection
    test_qrels = load_collection(adi_split, split="test").qrels
    b_ndcg = evaluate(test_qrels, read_run(work / "runs" / "baseline.test.trec"), ["ndcg@10"]).overall["ndcg@10"]
    assert res4["test"]["baseline"]["ndcg@10"] == pytest.approx(b_ndcg)
    sig = res4["significance_vs_baseline"]
    assert sig["baseline"] == "baseline" and any(r["run"] == "student" for r in sig["comparisons"])
    report4 = Path(tmp_path / "report.md").read_text()
    assert "## Same-budget baseline" in report4 and "| baseline |" in report4
    # a baseline that keeps the teacher, or none left, is refused before anything runs
    from retrieval_distill.config import PipelineConfig
    raw = cfg4.model_dump()
    for baseline, says in (([{"name": "listwise_kl"}], "use the teacher"), (True, None)):
        raw["student"]["baseline"] = baseline
        if says:
            with pytest.raises(ValueError, match=says):
                PipelineConfig.model_validate(raw)
    raw["train"]["losses"] = [{"name": "listwise_kl"}]  # nothing teacher-free left for `true`
    with pytest.raises(ValueError, match="has none"):
        PipelineConfig.model_validate(raw)
    raw["train"]["losses"] = [{"name": "corpus_infonce"}]  # the student is its own baseline
    with pytest.raises(ValueError, match="its own baseline"):
        PipelineConfig.model_validate(raw)


def test_pipeline_config_refuses_bad_student_section(tmp_path):
    from retrieval_distill.config import StudentConfig

    with pytest.raises(ValueError, match="two_tower"):
        StudentConfig(query_side={"projection_lr": 1e-3})
    with pytest.raises(ValueError, match="init's corpus embeddings"):
        StudentConfig(mode="query_side", query_side={"documents": "x"})
    with pytest.raises(ValueError, match="projection_lr"):
        StudentConfig(mode="query_side", query_side={"projection_lr": -1})
    with pytest.raises(ValueError, match="literal_error|two_tower"):
        StudentConfig(mode="towers")


def _adi_cfg(dataset, tmp_path, **over):
    cfg = {
        "name": "adi", "dataset": str(dataset), "work_dir": str(tmp_path / "work"),
        "splits": {"dev_size": 5, "seed": 1},
        "teacher": {"members": [{"kind": "bm25", "name": "bm25"},
                                {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "name": "minilm"}]},
        "eval": {"report": str(tmp_path / "report.md")},
    }
    cfg.update(over)
    return cfg


@pytest.mark.parametrize(
    "edit, error, message",
    [
        (lambda c, t: c["teacher"]["members"].append({"kind": "bi_encoder", "model": str(t / "no-such-model"), "name": "x"}),
         FileNotFoundError, "teacher.members[2] (x): model"),
        (lambda c, t: c.update(student_init=str(t / "missing-init")), FileNotFoundError, "student_init: model"),
        (lambda c, t: (t / "notamodel").mkdir() or c.update(student_init=str(t / "notamodel")), FileNotFoundError,
         "student_init: " + "{t}/notamodel: a folder, but not a model"),
        (lambda c, t: (t / "empty").mkdir() or (t / "empty" / "corpus.jsonl").write_text("") or c.update(dataset=str(t / "empty")),
         Exception, "empty corpus"),
        (lambda c, t: c.update(student={"mode": "query_side"}, train={"losses": [{"name": "corpus_infonse"}]}),
         ValueError, "unknown query-side loss 'corpus_infonse'"),
        (lambda c, t: c.update(train={"losses": [{"name": "corpus_infonce"}]}), ValueError, "unknown loss 'corpus_infonce' for student.mode two_tower"),
        (lambda c, t: c.update(train={"losses": []}), ValueError, "train.losses is empty"),
        (lambda c, t: c["teacher"]["members"].append({"kind": "crossencoder", "model": "all-MiniLM-L6-v2"}),
         ValueError, "teacher.members[2]: unknown teacher kind 'crossencoder'"),
        (lambda c, t: c["teacher"]["members"].append({"kind": "cross_encoder"}), ValueError, "a cross_encoder teacher needs `model:`"),
        (lambda c, t: c["teacher"].update(members=[]), ValueError, "teacher.members is empty"),
        (lambda c, t: c["teacher"].update(normalization="zscor"), ValueError, "teacher.normalization 'zscor'"),
        (lambda c, t: c.update(eval={"metrics": ["ndgc@10"], "report": str(t / "r.md")}), ValueError, "ndgc@10"),
        # a typo in the test split of a dataset that has qrels is not a corpus-only dataset
        (lambda c, t: c.update(splits={"test": "tset", "dev_size": 5}), ValueError, "split 'tset' has no judged queries"),
        (lambda c, t: c.update(queries={"source": "dataset"}, splits={"train": "trian", "dev_size": 5}),
         Exception, "trian"),
        (lambda c, t: c.update(queries={"source": "synthetic", "max_docs": 3}), ValueError, "queries.max_docs 3"),
        (lambda c, t: c.update(work_dir=""), ValueError, "give a folder of its own"),
        (lambda c, t: c.update(work_dir="/"), ValueError, "give a folder of its own"),
        (lambda c, t: c.update(index={"factories": []}), ValueError, "at least 1"),
        (lambda c, t: c.update(train={"losses": [{"name": "margin_mse", "options": {"bogus": 1}}]}), ValueError,
         "train.losses[0] (margin_mse): unknown option(s) ['bogus']"),
        (lambda c, t: c.update(train={"losses": [{"name": "margin_mse", "options": {"teacher_scale": "autoo"}}]}), ValueError,
         "teacher_scale must be a positive number or 'auto', got 'autoo'"),
        (lambda c, t: c.update(train={"losses": [{"name": "listwise_kl", "options": {"student_temperature": -1}}]}), ValueError,
         "train.losses[0] (listwise_kl): temperatures must be > 0"),
        (lambda c, t: c.update(train={"losses": [{"name": "inbatch_kd"}]}), ValueError, "the pipeline does not attach"),
        (lambda c, t: c.update(student={"mode": "query_side"}, train={"losses": [{"name": "margin_mse", "options": {"teacher_scale": "auto"}}]}),
         ValueError, "teacher_scale: auto is for two_tower students"),
        (lambda c, t: c.update(queries={"source": "synthetic"}, teacher={"candidates": [{"members": [{"kind": "bm25"}]}]}),
         ValueError, "dev cannot choose between them"),
        (lambda c, t: ((t / "tiny").mkdir(), (t / "tiny" / "corpus.jsonl").write_text(
            "".join((ADI / "corpus.jsonl").read_text().splitlines(keepends=True)[:3])), c.update(dataset=str(t / "tiny"))),
         ValueError, "3 document(s) with text; synthetic training queries and a dev split need at least 4"),
    ],
)
def test_bad_pipeline_inputs_fail_before_any_stage(adi_split, tmp_path, edit, error, message):
    """A model that does not exist or a corpus with no documents: one clear error, and no
    stage has run (no stamp, no file under work_dir)."""
    from retrieval_distill.config import PipelineConfig
    from retrieval_distill.pipeline import Pipeline

    cfg = _adi_cfg(adi_split, tmp_path)
    edit(cfg, tmp_path)
    message = message.replace("{t}", str(tmp_path))
    with pytest.raises(error, match=re.escape(message)):
        Pipeline(PipelineConfig(**cfg), echo=lambda *_: None).run()
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("*"))


def test_unknown_config_option_is_refused(tmp_path):
    from retrieval_distill.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "a", "dataset": "x", "work_dir": "w", "teacher": {"members": [{"kind": "bm25"}]},
                                 "student": {"mode": "query_side", "query_side": {"projection_lrr": 1}}}))
    with pytest.raises(ValueError, match="projection_lrr"):
        load_config(p)
    base = {"name": "a", "dataset": "x", "work_dir": "w", "teacher": {"members": [{"kind": "bm25"}]}}
    for profiles, message in (({"quick": None}, "profile 'quick' must be a mapping"), ("quick", "`profiles` must be a mapping")):
        p.write_text(yaml.safe_dump({**base, "profiles": profiles}))
        with pytest.raises(ValueError, match=re.escape(message)):
            load_config(p, "quick")
    p.write_text(yaml.safe_dump({**base, "splits": {"dev_size": 0}}))
    with pytest.raises(ValueError, match="dev_size"):
        load_config(p)


def test_queries_config_is_checked():
    from retrieval_distill.config import QueriesConfig

    with pytest.raises(ValueError, match="queries.kinds"):
        QueriesConfig(kinds=["titel"])
    with pytest.raises(ValueError, match="needs queries.source synthetic"):
        QueriesConfig(source="dataset", positive="teacher")


def test_corpus_only_folder_end_to_end_and_served(tmp_path):
    """A folder holding only ``corpus.jsonl`` (ADI's 82 documents): the `queries` stage makes
    synthetic queries, the teacher relabels their positives, the query-side student trains,
    the index is built, the report is on dev (there is no test split), and the service
    answers from the pipeline's index with the student as query encoder."""
    from fastapi.testclient import TestClient

    from retrieval_distill.config import PipelineConfig
    from retrieval_distill.pipeline import Pipeline
    from services.search_api import ServiceSettings, create_app

    corpus = tmp_path / "mycorpus"
    corpus.mkdir()
    (corpus / "corpus.jsonl").symlink_to(ADI / "corpus.jsonl")
    cfg = _adi_cfg(corpus, tmp_path, queries={"positive": "teacher"}, splits={"dev_size": 20, "seed": 1},
                   candidates={"bm25_k": 20, "dense_k": 20, "train_k": 5}, student={"mode": "query_side"},
                   train={"losses": [{"name": "corpus_infonce"}, {"name": "listwise_kl", "options": {"student_temperature": 0.05}}],
                          "epochs": 1, "batch_size": 16, "max_seq_length": 64, "lr": 1e-4},
                   index={"factories": ["Flat"]})
    lines: list[str] = []
    pipe = Pipeline(PipelineConfig(**cfg), echo=lines.append)
    result = pipe.run()
    work = tmp_path / "work"
    assert pipe.synthetic and not pipe.has_test and pipe.splits_used() == ("train", "dev")
    assert any("no judged queries (corpus only)" in line for line in lines)
    synth = json.loads((work / "queries" / "synth" / "synth.json").read_text())
    assert synth["stats"]["documents"] == 82 and synth["stats"]["queries"] > 200
    # train_k: the training lists are BM25 top-5 ∪ init top-5 ∪ the source document
    from retrieval_distill.evaluation.runs import read_run

    train_cands = read_run(work / "candidates" / "train.trec")
    assert max(len(r) for r in train_cands.values()) <= 11 and not (work / "runs" / "bm25.test.trec").exists()
    # teacher positives: the source document is never the positive, and not a candidate
    from retrieval_distill.data.collections import load_qrels

    source = load_qrels(work / "queries" / "synth" / "qrels" / "train.tsv")
    relabelled = load_qrels(work / "queries" / "teacher-positives" / "qrels" / "train.tsv")
    assert len(relabelled) >= 0.9 * len(source)
    assert all(not set(r) & set(source[q]) for q, r in relabelled.items())
    card = json.loads((work / "models" / "student" / "training_card.json").read_text())
    assert card["mode"] == "query_side" and card["documents_encoded"] == 0
    assert card["data"]["collection"] == str(work / "queries" / "teacher-positives")
    dev_n = len(json.loads((work / "splits.json").read_text())["dev"])
    assert dev_n == 20 and set(result) >= {"dev", "significance_vs_init"} and "test" not in result
    assert result["dev"]["student"]["n_judged"] <= dev_n and 0.0 <= result["dev"]["student"]["ndcg@10"] <= 1.0
    report = (tmp_path / "report.md").read_text()
    assert "## adi dev (" in report and "Significance on dev vs the student init" in report
    assert lines[-2].startswith("\n## adi dev (")

    with TestClient(create_app(ServiceSettings(_env_file=None, index_root=work / "index" / "flat", corpus=str(corpus)))) as c:
        for _ in range(400):
            st = c.get("/readyz").json()["modes"]["symmetric"]
            if st["loaded"] or st["error"]:
                break
            time.sleep(0.05)
        assert st["loaded"], st
        r = c.post("/search", json={"query": "information retrieval indexing", "k": 3})
        assert r.status_code == 200 and len(r.json()["hits"]) == 3
        # the corpus-only folder gives the hits their text (it has no queries.jsonl)
        assert all(h["text"] for h in r.json()["hits"]), r.json()
        # the manifest names the student as the query encoder (path cut to its last part without the key)
        assert c.get("/index").json()["modes"]["symmetric"]["manifest"]["query_encoder"]["name"] == "student"


def test_set_overrides_and_work_dir_in_report_path(tmp_path):
    """``rd pipeline CONFIG --set KEY=VALUE``: dotted keys, YAML values, applied after the
    profile; a malformed override or one that breaks the config is one line, exit 2."""
    from typer.testing import CliRunner

    from retrieval_distill.cli import app
    from retrieval_distill.config import apply_overrides, load_config

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"name": "a", "dataset": "x", "work_dir": "w", "teacher": {"members": [{"kind": "bm25"}]},
                                 "eval": {"report": "{work_dir}/report.md"},
                                 "profiles": {"quick": {"train": {"epochs": 3}}}}))
    cfg = load_config(p, "quick", overrides=["dataset=my corpus/", "work_dir=work/mine", "train.epochs=2",
                                             "index.factories=[Flat]", "queries.positive=teacher"])
    assert cfg.dataset == "my corpus/" and cfg.train.epochs == 2 and cfg.index.factories == ["Flat"]
    assert cfg.queries.positive == "teacher" and cfg.eval.report == "work/mine/report.md"
    assert apply_overrides({"a": {"b": 1}}, ["a.c=x: y"]) == {"a": {"b": 1, "c": {"x": "y"}}}
    for bad, message in ((["epochs"], "expected KEY=VALUE"), (["name.x=1"], "name is not a mapping"), ([".a=1"], "expected KEY=VALUE"),
                         (["profile=quick"], "chosen with --profile NAME"), (["train.lr=.nan"], "not a finite number"),
                         (["index.params={HNSW32: {efSearch: .inf}}"], "not a finite number")):
        with pytest.raises(ValueError, match=re.escape(message)):
            load_config(p, overrides=bad)
    runner = CliRunner()
    r = runner.invoke(app, ["pipeline", str(p), "--set", "train.epochz=2"])
    assert r.exit_code == 2 and "epochz" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["pipeline", str(p), "--set", "train.epochs"])
    assert r.exit_code == 2 and "expected KEY=VALUE" in r.output


def test_bf16_bi_encoder_member_is_not_given_the_fp32_corpus_embeddings(adi_split, tmp_path, native_bf16):
    """The pipeline preloads its fp32 corpus embeddings into a bi-encoder teacher member only
    when that member runs fp32: a bf16 member encodes its own documents (its queries are bf16),
    as ``rd teacher score`` refuses an encoding folder of another dtype."""
    from retrieval_distill.config import PipelineConfig
    from retrieval_distill.pipeline import Pipeline
    from retrieval_distill.teachers.base import TeacherSpec, build_teacher

    cfg = PipelineConfig.model_validate({"name": "adi", "dataset": str(adi_split), "work_dir": str(tmp_path / "work"),
                                         "teacher": {"members": [{"kind": "bm25"}]}})
    lines: list[str] = []
    pipe = Pipeline(cfg, echo=lines.append)
    docids = list(pipe.collection("test").corpus)
    for dtype, preloaded in (("bf16", 0), ("fp32", len(docids))):
        spec = TeacherSpec(kind="bi_encoder", model="all-MiniLM-L6-v2", name=f"minilm-{dtype}", options={"dtype": dtype})
        teacher = build_teacher(spec)
        assert teacher.dtype == dtype
        pipe._prime(teacher, spec)
        assert len(teacher._preloaded) == preloaded
    assert any("minilm-bf16: runs bf16" in line and "not preloaded" in line for line in lines), lines
    assert not any("minilm-fp32" in line for line in lines)


def test_teacher_candidates_best_on_dev_is_kept(adi_split, tmp_path):
    """``teacher.candidates``: each candidate teacher is fitted and evaluated on dev, the best
    is kept and used for the score files, every candidate's figure is recorded."""
    from retrieval_distill.config import PipelineConfig
    from retrieval_distill.pipeline import Pipeline

    bm25 = {"kind": "bm25", "name": "bm25"}
    minilm = {"kind": "bi_encoder", "model": "all-MiniLM-L6-v2", "name": "minilm"}
    cfg = _adi_cfg(adi_split, tmp_path, candidates={"bm25_k": 20, "dense_k": 20},
                   teacher={"candidates": [{"name": "bm25-only", "members": [bm25], "weight_grid": [1.0]},
                                           {"name": "bm25+minilm", "members": [bm25, minilm], "weight_grid": [0.0, 0.5, 1.0]}]})
    lines: list[str] = []
    Pipeline(PipelineConfig(**cfg), echo=lines.append).run(until="teacher")
    rec = json.loads((tmp_path / "work" / "teacher" / "ensemble.json").read_text())
    figures = {c["name"]: c["dev_ndcg@10"] for c in rec["candidates"]}
    assert set(figures) == {"bm25-only", "bm25+minilm"}
    assert rec["chosen"] == max(figures, key=lambda n: (figures[n], n == "bm25-only"))
    assert rec["spec"]["name"] == rec["chosen"] and rec["dev_fit"]["best"] == figures[rec["chosen"]]
    manifest = json.loads((tmp_path / "work" / "teacher" / "scores" / "test" / "manifest.json").read_text())
    assert manifest["teacher_name"] == rec["chosen"]
    assert any(line.startswith(f"  teacher kept: {rec['chosen']}") for line in lines)
    # one teacher inline and a list at once, a candidate without members, duplicate names: refused
    for teacher, message in (({"members": [bm25], "candidates": [{"members": [bm25]}]}, "not both"),
                             ({"candidates": [{"name": "a", "members": []}]}, "candidates[0].members is empty"),
                             ({"candidates": [{"name": "a", "members": [bm25]}, {"name": "a", "members": [minilm]}]}, "names must differ"),
                             ({"members": [bm25], "weight_grid": [0.0]}, "at least one > 0")):
        with pytest.raises(ValueError, match=re.escape(message)):
            PipelineConfig(**_adi_cfg(adi_split, tmp_path, teacher=teacher))


def test_colbert_fit_step_in_the_teacher_list(adi_split, tmp_path):
    """A ColBERT member with ``projection: fit``: the teacher stage fits its projection on the
    train queries (train minus dev, never a dev query), scores with it, records the fit in
    ensemble.json, judges it on dev beside the other candidate, and reuses the fit when the
    stage runs again after a kill (here: its score files removed)."""
    import torch

    from retrieval_distill.config import PipelineConfig
    from retrieval_distill.pipeline import Pipeline

    colbert = {"kind": "colbert", "model": "all-MiniLM-L6-v2", "name": "colbert-fit",
               "options": {"projection": "fit", "doc_maxlen": 64, "fit": {"dim": 16, "epochs": 2, "batch_size": 8}}}
    bm25 = {"kind": "bm25", "name": "bm25"}
    cfg = _adi_cfg(adi_split, tmp_path, candidates={"bm25_k": 10, "dense_k": 10},
                   teacher={"candidates": [{"name": "bm25", "members": [bm25], "weight_grid": [1.0]},
                                           {"name": "colbert", "members": [colbert], "weight_grid": [1.0]}]})
    lines: list[str] = []
    Pipeline(PipelineConfig(**cfg), echo=lines.append).run(until="teacher")
    work = tmp_path / "work"
    rec = json.loads((work / "teacher" / "ensemble.json").read_text())
    (fit_dir, card), = rec["fit_steps"].items()
    splits = json.loads((work / "splits.json").read_text())
    assert card["dim"] == 16 and card["hidden"] == 384 and card["epochs"] == 2 and len(card["loss_history"]) == 2
    assert 0 < card["queries"] <= len(splits["train"])  # the train queries only, never a dev query
    w = torch.load(work / fit_dir / "projection.pt", weights_only=True)
    assert tuple(w.shape) == (16, 384)
    assert {c["name"] for c in rec["candidates"]} == {"bm25", "colbert"}
    if rec["chosen"] == "colbert":
        assert rec["spec"]["members"][0]["options"]["projection"] == str(work / fit_dir / "projection.pt")
    assert any("teacher fit colbert-fit: ColBERT projection 16x384" in line for line in lines)
    # the stage runs again (its outputs gone, as after a kill while scoring): the fit is reused
    for f in (work / "teacher" / "scores").rglob("manifest.json"):
        f.unlink()
    mtime = (work / fit_dir / "projection.pt").stat().st_mtime_ns
    lines.clear()
    Pipeline(PipelineConfig(**cfg), echo=lines.append).run(until="teacher")
    assert (work / fit_dir / "projection.pt").stat().st_mtime_ns == mtime
    assert any("teacher fit colbert-fit: reusing" in line for line in lines)
    # bad fit steps: refused when the config loads
    for member, message in (({**bm25, "options": {"projection": "fit"}}, "`projection: fit` is a ColBERT fit step"),
                            ({**colbert, "options": {"fit": {"dim": 8}}}, "`options.fit` needs `options.projection: fit`"),
                            ({**colbert, "options": {"projection": "fit", "fit": {"dim": 0}}}, "options.fit: dim: Input should be greater than or equal to 1"),
                            ({**colbert, "options": {"projection": "fit", "fit": {"epoch": 3}}}, "options.fit: epoch: Extra inputs")):
        with pytest.raises(ValueError, match=re.escape(message)):
            PipelineConfig(**_adi_cfg(adi_split, tmp_path, teacher={"members": [member]}))


def test_two_tower_student_keeps_the_dev_best_epoch(adi_split, tmp_path):
    """``student.keep: best`` on a two-tower student: the initial model and every epoch are
    evaluated on the carved dev split and the best trained epoch is the saved model (its card
    says which)."""
    from retrieval_distill.config import PipelineConfig
    from retrieval_distill.pipeline import Pipeline

    cfg = _adi_cfg(adi_split, tmp_path, candidates={"bm25_k": 10, "dense_k": 10}, student={"mode": "two_tower", "keep": "best"},
                   train={"losses": [{"name": "margin_mse", "options": {"teacher_scale": 0.1}}], "n_negatives": 2,
                          "negative_depth": 10, "epochs": 2, "batch_size": 4, "max_seq_length": 64, "save_steps": 1000})
    lines: list[str] = []
    Pipeline(PipelineConfig(**cfg), echo=lines.append).run(until="train")
    card = json.loads((tmp_path / "work" / "models" / "student" / "training_card.json").read_text())
    per_epoch = card["dev_per_epoch"]
    metric = card["dev_primary_metric"]
    assert [round(e["epoch"]) for e in per_epoch] == [0, 1, 2]  # the init is evaluated too, for the record
    best = max(per_epoch[1:], key=lambda e: e[metric])  # the kept model is a trained epoch (HF: best checkpoint)
    assert card["dev_selected"][metric] == best[metric]
    assert any(f"dev-selected epoch {card['dev_selected']['epoch']}" in line for line in lines)
    assert PipelineConfig(**_adi_cfg(adi_split, tmp_path)).student.selects_epoch is False
    assert PipelineConfig(**_adi_cfg(adi_split, tmp_path, student={"mode": "query_side"})).student.selects_epoch is True


def test_every_shipped_pipeline_config_profile_and_repro_command_loads():
    """Every pipeline config in eval/configs and each of its profiles validates, and every
    `rd pipeline CONFIG [--profile P] [--set K=V]` command of eval/repro.yaml names a config,
    profile and overrides that load (a typo there would only show hours into `rd repro check`)."""
    import shlex

    from retrieval_distill.config import load_config

    root = Path(__file__).resolve().parents[1]
    configs = [p for p in sorted((root / "eval" / "configs").glob("*.yaml")) if "teacher" in yaml.safe_load(p.read_text())]
    assert len(configs) >= 4
    for p in configs:
        load_config(p)
        for profile in yaml.safe_load(p.read_text()).get("profiles") or {}:
            load_config(p, profile)
    table = yaml.safe_load((root / "eval" / "repro.yaml").read_text())
    pipeline_rows = 0
    for row in table["rows"]:
        for cmd in row.get("commands", []):
            words = shlex.split(cmd)
            if words[:2] != ["rd", "pipeline"]:
                continue
            pipeline_rows += 1
            args = words[3:]
            profile = args[args.index("--profile") + 1] if "--profile" in args else None
            sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
            load_config(root / words[2], profile, overrides=sets)
    assert pipeline_rows >= 8


def test_unseen_documents_dev_split(adi_split, tmp_path):
    """splits.dev_documents: unseen draws dev only among train queries whose relevant
    documents no other train query shares: no dev-relevant document is a training positive."""
    from retrieval_distill.config import PipelineConfig
    from retrieval_distill.data.collections import load_collection
    from retrieval_distill.pipeline import Pipeline

    cfg = PipelineConfig.model_validate(_adi_cfg(adi_split, tmp_path, splits={"dev_size": 4, "seed": 1, "dev_documents": "unseen"}))
    lines: list[str] = []
    Pipeline(cfg, echo=lines.append).splits()
    sp = json.loads((tmp_path / "work" / "splits.json").read_text())
    qrels = load_collection(adi_split, split="train").qrels
    rel = lambda qs: {d for q in qs for d, g in qrels[q].items() if g > 0}  # noqa: E731
    assert len(sp["dev"]) == 4 and sp["dev_documents"] == "unseen" and len(sp["train"]) == 16
    assert not rel(sp["dev"]) & rel(sp["train"])
    pool = [q for q in qrels if not rel([q]) & rel([o for o in qrels if o != q])]
    assert set(sp["dev"]) <= set(pool) and any("train queries whose relevant documents" in l for l in lines)
    # the default draws from every judged query (and its stamp is the one of runs made before the option)
    cfg2 = PipelineConfig.model_validate(_adi_cfg(adi_split, tmp_path / "b", splits={"dev_size": 4, "seed": 1}))
    Pipeline(cfg2, echo=lines.append).splits()
    assert "dev_documents" not in json.loads((tmp_path / "b" / "work" / "splits.json").read_text())
    # too few such queries for dev_size: a clear error
    cfg3 = PipelineConfig.model_validate(_adi_cfg(adi_split, tmp_path / "c", splits={"dev_size": 5, "seed": 1, "dev_documents": "unseen"}))
    assert len(pool) == 4  # of ADI's 20 train queries here
    with pytest.raises(ValueError, match="only 4 of 20 train queries have relevant documents no other query shares"):
        Pipeline(cfg3, echo=lines.append).splits()


def test_every_shipped_student_config_validates():
    """The `rd student train` configs of eval/configs (query_side/, students/) validate as
    student jobs: a misspelt field there would only show when someone runs the recipe."""
    from retrieval_distill.distill.job import load_job

    root = Path(__file__).resolve().parents[1] / "eval" / "configs"
    jobs = sorted((root / "query_side").glob("*.yaml")) + sorted((root / "students").glob("*.yaml"))
    assert len(jobs) >= 10
    for p in jobs:
        job = load_job(p)
        assert job.output, p
