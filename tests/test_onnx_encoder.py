"""The ONNX Runtime query encoder against its torch original, on ADI queries with MiniLM.

Each module run exports MiniLM once into a temporary cache (a few seconds) and quantises it.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def fingerprint():
    from retrieval_distill.models import model_fingerprint

    return model_fingerprint("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def fp32(minilm, fingerprint, cache):
    from retrieval_distill.models.onnx_encoder import OnnxQueryEncoder

    return OnnxQueryEncoder(minilm, fingerprint, quantize="none", cache_dir=cache)


def test_fp32_vectors_equal_torch(fp32, minilm, adi):
    queries = list(adi.queries.values())  # 35 queries, 5 to 60 word pieces: several length groups
    ref = minilm.encode(queries, convert_to_numpy=True, normalize_embeddings=True)
    got = fp32.encode(queries)
    assert got.dtype == np.float32 and got.shape == (35, 384)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert fp32.min_cosine_seen > 0.9999
    # one query at a time: same vectors as the grouped batch (rows come back in input order)
    for i in (0, 7, 34):
        np.testing.assert_allclose(fp32.encode([queries[i]])[0], got[i], atol=1e-5)


def test_int8_stays_within_its_cosine_floor(minilm, fingerprint, cache, adi):
    from retrieval_distill.models.onnx_encoder import DEFAULT_MIN_COSINE, VARIANTS, OnnxQueryEncoder

    enc = OnnxQueryEncoder(minilm, fingerprint, quantize="int8", cache_dir=cache)
    assert enc.path.name == VARIANTS["int8"] and enc.path.parent == cache / f"st-{fingerprint}"
    assert enc.min_cosine == DEFAULT_MIN_COSINE["int8"] == 0.98
    cos = enc.cosines_to_torch(minilm, list(adi.queries.values()))
    assert cos.min() >= 0.98, cos.min()
    assert cos.max() < 0.99999  # really quantised: not the fp32 graph under another name
    # the MatMul weights are int8 (the token embedding table, a Gather, stays fp32)
    import onnx

    nodes = onnx.load(str(enc.path)).graph.node
    ops = {n.op_type for n in nodes}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops or "DynamicQuantizeMatMul" in ops, ops
    # float MatMuls left: all 8 of layer 0 (its weights stay fp32), and in later layers only the
    # 2 activation x activation products of attention (MatMulConstBOnly)
    float_mm = [n.name for n in nodes if n.op_type == "MatMul"]
    assert sum("/layer.0/" in n for n in float_mm) == 8
    assert sum("/layer.1/" in n for n in float_mm) == 2 and len(float_mm) == 8 + 5 * 2
    assert enc.path.stat().st_size < 0.75 * (cache / f"st-{fingerprint}" / VARIANTS["none"]).stat().st_size


def test_an_impossible_floor_raises(minilm, fingerprint, cache, fp32):
    from retrieval_distill.models.onnx_encoder import OnnxFidelityError, OnnxQueryEncoder

    with pytest.raises(OnnxFidelityError, match=r"\(none\) .* min cosine (0\.9\d+|1\.0000) < 1\.5 on 8 sample queries"):
        OnnxQueryEncoder(minilm, fingerprint, quantize="none", min_cosine=1.5, cache_dir=cache)
    with pytest.raises(ValueError, match="quantize"):
        OnnxQueryEncoder(minilm, fingerprint, quantize="int4", cache_dir=cache)
    with pytest.raises(ValueError, match="no texts"):
        fp32.encode([])


def test_length_groups_bound_padding(fp32):
    fp32.max_padding, fp32.max_group = 0.25, 64
    # sorted lengths 4 4 5 | 10 12 | 40: adding 10 to [4,4,5] pads to 40 for 23 real tokens
    assert fp32.groups([10, 4, 40, 5, 12, 4]) == [[1, 5, 3], [0, 4], [2]]
    fp32.max_group = 2
    assert fp32.groups([7, 7, 7, 7, 7]) == [[0, 1], [2, 3], [4]]
    fp32.max_group = 64


def test_export_covers_a_dense_projection(minilm, tmp_path, cache):
    """A student with a Dense head (e.g. projected into a teacher's 256-d space): the exported
    graph includes the projection."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    from retrieval_distill.models.onnx_encoder import OnnxQueryEncoder

    torch.manual_seed(0)
    modules = [minilm[0], minilm[1], Dense(384, 256, activation_function=torch.nn.Identity())]
    model = SentenceTransformer(modules=modules, device="cpu")
    enc = OnnxQueryEncoder(model, "dense-head-test", quantize="none", cache_dir=cache)
    texts = ["citation indexing", "automatic abstracting and the evaluation of abstracts"]
    got = enc.encode(texts)
    ref = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    assert got.shape == (2, 256)
    np.testing.assert_allclose(got, ref, atol=1e-4)
