"""Model resolution offline: bundled aliases, local paths, clear errors."""

import time

import numpy as np
import pytest

from retrieval_distill.models import ModelNotFoundError, model_fingerprint, resolve_model
from retrieval_distill.models.encoder import Encoder


def test_bundled_minilm_resolves_and_embeds(minilm):
    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert path == resolve_model("all-MiniLM-L6-v2")
    e = minilm.encode(["a query about documentation", "an unrelated sentence about cats"], normalize_embeddings=True)
    assert e.shape == (2, 384)
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_missing_model_fails_fast_naming_what_was_tried(tmp_path):
    t0 = time.time()
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("someone/not-a-real-model")
    assert "HF_HUB_OFFLINE" in str(e.value) and "bundled aliases" in str(e.value)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "no" / "such" / "model"))
    assert time.time() - t0 < 5  # no hub retries (a generous bound, not a benchmark)


def test_encoder_and_fingerprint_change_with_weights(tmp_path, minilm):
    fp = model_fingerprint("all-MiniLM-L6-v2")
    assert len(fp) == 16 and fp == model_fingerprint("all-MiniLM-L6-v2")
    copy = tmp_path / "copy"
    minilm.save(str(copy))
    enc = Encoder(str(copy))
    q = enc.encode_queries(["information retrieval"])
    d = enc.encode_documents(["information retrieval systems", "baking bread"])
    assert q.dtype == np.float32 and q.shape == (1, 384) and d.shape == (2, 384)
    assert (q @ d.T)[0, 0] > (q @ d.T)[0, 1]
    # perturb the weights: the fingerprint must change
    import torch

    with torch.no_grad():
        next(iter(minilm.parameters())).add_(0.0)
    from safetensors.torch import load_file, save_file

    w = copy / "model.safetensors"
    tensors = load_file(str(w))
    k = next(iter(tensors))
    tensors[k] = tensors[k] + 1e-3
    save_file(tensors, str(w))
    assert model_fingerprint(str(copy)) != model_fingerprint("all-MiniLM-L6-v2")
