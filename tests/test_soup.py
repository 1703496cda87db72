"""eval/configs/query_side/soup.py: a uniform soup of two real all-MiniLM-L6-v2 folders is
their element-wise mean (hand-checked on one perturbed tensor), keeps the ingredients'
document-encoder record, loads as a sentence-transformers model, and refuses ingredients
trained against different document encoders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from script_support import load_script


def _soup():
    return load_script("eval/configs/query_side/soup.py")


def _student(src: Path, dst: Path, doc_fp: str) -> Path:
    shutil.copytree(src, dst)
    card = {"mode": "query_side", "document_encoder": {"name": "all-MiniLM-L6-v2", "fingerprint": doc_fp}}
    (dst / "training_card.json").write_text(json.dumps(card))
    return dst


def test_uniform_soup_is_the_mean_and_checks_the_document_encoder(tmp_path):
    from safetensors.torch import load_file, save_file
    from sentence_transformers import SentenceTransformer

    from retrieval_distill.models.resolve import resolve_model

    src = Path(resolve_model("all-MiniLM-L6-v2"))
    a = _student(src, tmp_path / "a", "abc")
    b = _student(src, tmp_path / "b", "abc")
    st = load_file(str(b / "model.safetensors"))
    name = next(k for k in st if k.endswith("word_embeddings.weight"))
    st[name] = st[name] + 1.0
    save_file(st, str(b / "model.safetensors"), metadata={"format": "pt"})

    out = _soup().main([str(tmp_path / "soup"), str(a), str(b)])
    soup, orig = load_file(str(out / "model.safetensors")), load_file(str(a / "model.safetensors"))
    torch.testing.assert_close(soup[name], orig[name] + 0.5, atol=1e-6, rtol=0)
    other = next(k for k in orig if k != name and orig[k].is_floating_point())
    assert torch.equal(soup[other], orig[other])
    card = json.loads((out / "training_card.json").read_text())
    assert card["document_encoder"]["fingerprint"] == "abc" and card["soup"]["ingredients"] == [str(a), str(b)]
    assert SentenceTransformer(str(out), device="cpu").encode(["a query"]).shape == (1, 384)

    c = _student(src, tmp_path / "c", "other")
    with pytest.raises(SystemExit, match="different document encoders"):
        _soup().main([str(tmp_path / "soup2"), str(a), str(c)])
    with pytest.raises(SystemExit, match="no model.safetensors"):
        _soup().main([str(tmp_path / "soup3"), str(a), str(tmp_path / "nowhere")])
