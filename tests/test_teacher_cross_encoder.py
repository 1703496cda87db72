"""Cross-encoder teacher: `rd teacher fit` on ADI (a few steps), fp32 = CrossEncoder.predict,
ONNX export exact in fp32, int8 checked against fp32 and refused when it drifts."""

import numpy as np
import pytest
from typer.testing import CliRunner

from retrieval_distill.cli import app
from retrieval_distill.evaluation.runs import read_run
from retrieval_distill.models import ModelNotFoundError
from retrieval_distill.teachers import build_teacher
from retrieval_distill.teachers.scoring import Candidates, read_scores, score_candidates
from retrieval_distill.teachers.speed import SpeedCheckError


@pytest.fixture(scope="module")
def ce_path(adi, adi_bm25_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ce") / "ce-adi"
    res = CliRunner().invoke(
        app,
        ["teacher", "fit", "--backbone", "all-MiniLM-L6-v2", "--dataset", str(adi.root), "--split", "test",
         "--candidates", str(adi_bm25_run[1]), "--output", str(out), "--negatives", "2", "--max-steps", "3",
         "--batch-size", "8", "--max-length", "96"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def sample(adi, adi_bm25_run):
    run = read_run(adi_bm25_run[1])
    qs = [q for q in list(run)[:3] for _ in run[q]]
    ds = [d for q in list(run)[:3] for d in run[q]]
    return [adi.queries[q] for q in qs], [adi.doc_text(d) for d in ds]


def test_fit_writes_a_cross_encoder_with_a_card(ce_path):
    import json

    card = json.loads((ce_path / "fit.json").read_text())
    st = card["stages"][-1]
    assert st["steps"] == 3 and st["positives"] == 170  # all 170 ADI qrels are positives
    assert st["rows"] == 170 + 2 * 35
    assert not ce_path.with_name(ce_path.name + ".tmp").exists()


def test_fp32_is_crossencoder_predict_logits(ce_path, sample):
    from sentence_transformers import CrossEncoder

    qs, ps = sample
    t = build_teacher({"kind": "cross_encoder", "model": str(ce_path), "options": {"max_length": 96}})
    assert t.scale == "logit"
    s = t.score(qs, ps)
    ref = CrossEncoder(str(ce_path), max_length=96)  # default activation: sigmoid
    np.testing.assert_allclose(1 / (1 + np.exp(-s)), ref.predict(list(zip(qs, ps))), atol=1e-5)


def test_onnx_fp32_exact_and_int8_checked(ce_path, sample, adi, adi_bm25_run, tmp_path, monkeypatch):
    monkeypatch.setattr("retrieval_distill.teachers.cross_encoder.CACHE", tmp_path / "cache")
    qs, ps = sample
    ref = build_teacher({"kind": "cross_encoder", "model": str(ce_path), "options": {"max_length": 96}}).score(qs, ps)
    onnx32 = build_teacher({"kind": "cross_encoder", "model": str(ce_path), "options": {"max_length": 96, "backend": "onnx", "quantize": "none"}})
    np.testing.assert_allclose(onnx32.score(qs, ps), ref, atol=1e-4)
    assert onnx32.speed_check["ok"] and onnx32.speed_check["rel_max_diff"] < 0.01
    # int8 with an impossible tolerance: refused, not silently used
    strict = build_teacher({"kind": "cross_encoder", "model": str(ce_path), "options": {"max_length": 96, "backend": "onnx", "rel_tol": 1e-9}})
    with pytest.raises(SpeedCheckError, match="onnx-int8"):
        strict.score(qs, ps)
    # int8 within its tolerance: runs, and the check lands in the score-file manifest
    loose = {"kind": "cross_encoder", "model": str(ce_path),
             "options": {"max_length": 96, "backend": "onnx", "rel_tol": 100.0, "min_spearman": -1.0, "check_sample": 16}}  # fmt: skip
    run = read_run(adi_bm25_run[1])
    cands = Candidates.from_pairs([(q, d) for q in sorted(run)[:3] for d in run[q]])
    m = score_candidates(loose, cands, adi.queries, adi.doc_text, tmp_path / "s", corpus_ids=adi.corpus, progress=False)
    assert m["speed_check"]["option"] == "onnx-int8" and m["speed_check"]["n"] == 16
    assert len(read_scores(tmp_path / "s")) == 30


def test_bad_models(tmp_path):
    with pytest.raises(ModelNotFoundError):
        build_teacher({"kind": "cross_encoder", "model": str(tmp_path / "no-such-model")})
    with pytest.raises(ValueError, match="not a cross-encoder"):
        build_teacher({"kind": "cross_encoder", "model": "all-MiniLM-L6-v2"})


def test_fit_refuses_to_replace_a_foreign_folder(tmp_path):
    """rd teacher fit replaces its own earlier output (with fit.json) but never a folder it did
    not write: checked before the backbone is loaded, and the folder is left as it was."""
    from retrieval_distill.teachers.fit import fit_cross_encoder

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a rd teacher fit output folder"):
        fit_cross_encoder("all-MiniLM-L6-v2", {"q": "x"}, {"q": {"d": 1}}, {"q": ["d"]}, lambda d: "x", precious)
    assert (precious / "keep.txt").read_text() == "mine" and len(list(precious.iterdir())) == 1
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(FileExistsError):
        fit_cross_encoder("all-MiniLM-L6-v2", {"q": "x"}, {"q": {"d": 1}}, {"q": ["d"]}, lambda d: "x", afile)


def test_bf16_too_few_pairs_to_check_runs_fp32(ce_path, sample, native_bf16):
    """Before any check, a call of fewer than 3 pairs cannot check bf16 (``speed.stays_exact``):
    it is scored in fp32, bit-equal to the fp32 teacher, and the check waits for a larger call."""
    qs, ps = sample
    opts = {"max_length": 96}
    ref = build_teacher({"kind": "cross_encoder", "model": str(ce_path), "options": opts})
    bf = build_teacher({"kind": "cross_encoder", "model": str(ce_path), "options": {**opts, "dtype": "bf16"}})
    assert np.array_equal(bf.score(qs[:2], ps[:2]), ref.score(qs[:2], ps[:2]))
    assert bf.speed_check is None
    bf.score(qs[:4], ps[:4])
    assert bf.speed_check is not None and bf.speed_check["n"] == 4 and bf.speed_check["option"] == "bf16"


def test_bf16_falls_back_to_fp32_without_native_bf16(ce_path, sample, monkeypatch):
    """No native bf16 on this CPU: the cross-encoder's ``dtype: bf16`` runs (and fingerprints
    as) fp32, bit-equal to the fp32 teacher, with no speed check to run."""
    import retrieval_distill.models.encoder as E

    monkeypatch.setattr(E, "cpu_bf16_flags", lambda: [])
    qs, ps = sample
    opts = {"max_length": 96}
    ref = build_teacher({"kind": "cross_encoder", "model": str(ce_path), "options": {**opts, "dtype": "fp32"}})
    bf = build_teacher({"kind": "cross_encoder", "model": str(ce_path), "options": {**opts, "dtype": "bf16"}})
    assert bf.dtype == "fp32" and not bf.fast and bf.fingerprint == ref.fingerprint
    assert np.array_equal(bf.score(qs[:4], ps[:4]), ref.score(qs[:4], ps[:4])) and bf.speed_check is None
