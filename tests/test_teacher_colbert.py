"""ColBERT-style MaxSim teacher (zero-shot from MiniLM token embeddings) against a by-hand
computation, markers/augmentation, skipping, and the cached document state."""

import numpy as np
import pytest
import torch

from retrieval_distill.teachers import build_teacher


@pytest.fixture(scope="module")
def colbert():
    return build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"doc_maxlen": 128}})


def _by_hand(t, text, maxlen, skip):
    enc = t.tokenizer(text, truncation=True, max_length=maxlen, return_tensors="pt")
    with torch.no_grad():
        h = t.model(**enc).last_hidden_state[0]
    h = torch.nn.functional.normalize(h, dim=-1).numpy()
    toks = t.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    keep = [i for i, tok in enumerate(toks) if tok not in skip]
    return h[keep]


def test_maxsim_by_hand(colbert, adi):
    q, d = adi.queries["3"], adi.doc_text("3")
    skip = {"[CLS]", "[SEP]", "?", ".", ",", "-", "(", ")", ":", ";", "'"}
    qe, de = _by_hand(colbert, q, 64, skip), _by_hand(colbert, d, 128, skip)
    assert colbert.encode_queries([q])[0].shape == qe.shape  # "what is information science give definitions where possible" minus punctuation
    expect = (qe @ de.astype(np.float16).astype(np.float32).T).max(1).sum()
    got = colbert.score([q], [d])[0]
    assert got == pytest.approx(expect, abs=2e-3)
    assert colbert.scale == "maxsim" and 0 < got <= qe.shape[0] + 1e-3


def test_score_ids_caches_documents_and_matches_score(colbert, adi):
    colbert.clear_cache()
    qids = ["1", "1", "2"]
    docs = ["17", "46", "17"]
    qs, ps = [adi.queries[q] for q in qids], [adi.doc_text(d) for d in docs]
    a = colbert.score_ids(qids, qs, docs, ps)
    assert set(colbert._doc_cache) == {"17", "46"} and colbert._doc_cache["17"].dtype == np.float16
    np.testing.assert_allclose(a, colbert.score(qs, ps), atol=1e-3)
    # preloaded state is what gets used
    state = colbert.encode_document_state([adi.doc_text("5")])
    colbert.set_document_embeddings(["17"], state)
    b = colbert.score_ids(["1"], [adi.queries["1"]], ["17"], ["ignored"])
    assert b[0] == pytest.approx(colbert.score([adi.queries["1"]], [adi.doc_text("5")])[0], abs=1e-3)
    with pytest.raises(ValueError, match="expected"):
        colbert.set_document_embeddings(["x"], [np.zeros((3, 7), np.float16)])
    colbert.clear_cache()


def test_markers_augmentation_and_projection(adi, tmp_path):
    w = np.random.default_rng(0).standard_normal((32, 384)).astype(np.float32)
    np.save(tmp_path / "proj.npy", w)
    t = build_teacher(
        {"kind": "colbert", "model": "all-MiniLM-L6-v2",
         "options": {"markers": ["[unused0]", "[unused1]"], "query_maxlen": 16, "augment": True, "skip_special": False,
                     "projection": str(tmp_path / "proj.npy")}}
    )  # fmt: skip
    assert t.dim == 32
    qe = t.encode_queries([adi.queries["3"]])[0]
    assert qe.shape == (16, 32)  # augmented to query_maxlen with [MASK], nothing skipped
    np.testing.assert_allclose(np.linalg.norm(qe, axis=1), 1, atol=1e-5)
    # the marker sits right after [CLS]: the same text without it embeds differently
    plain = build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2",
                           "options": {"query_maxlen": 16, "augment": True, "skip_special": False, "projection": str(tmp_path / "proj.npy")}})  # fmt: skip
    assert plain.encode_queries([adi.queries["3"]])[0].shape == (16, 32)
    assert not np.allclose(plain.encode_queries([adi.queries["3"]])[0][0], qe[0])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"markers": ["[Qx]", "[Dx]"]}})
    with pytest.raises(FileNotFoundError):
        build_teacher({"kind": "colbert", "model": "all-MiniLM-L6-v2", "options": {"projection": str(tmp_path / "none.npy")}})
