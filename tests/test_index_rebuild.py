"""Rebuild jobs (no-op / params / incremental / full), `rd index` CLI and verify, on ADI with MiniLM."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import index_support as S
from retrieval_distill.index.build import build_index, corpus_fingerprint, doc_hashes
from retrieval_distill.index.cli import app
from retrieval_distill.index.rebuild import _refs, plan, rebuild
from retrieval_distill.index.store import IndexStore
from retrieval_distill.index.verify import verify_version
from retrieval_distill.search.dense import DenseSearcher


def _log():
    lines = []
    return lines, lines.append


def test_rebuild_full_noop_params_incremental(tmp_path):
    S.adi_encoded()  # the shared encoding cache: the first full build encodes nothing
    spec = S.spec(tmp_path, S.copy_beir(tmp_path / "adi"))
    lines, log = _log()
    r1 = rebuild(spec, log=log)
    assert r1.decision.action == "full" and r1.decision.reasons == ["no current version"]
    assert r1.version.manifest.extra["encoding_cache"] == str(S.adi_encoded()[2])
    assert any(line.startswith("decision: full: no current version") for line in lines)

    r2 = rebuild(spec, log=log)
    assert r2.decision.action == "noop" and r2.version.version_id == r1.version.version_id
    assert "unchanged" in lines[-1]

    r3 = rebuild(S.spec(tmp_path, tmp_path / "adi", params={"efSearch": 32}), log=log)
    assert r3.decision.action == "params" and r3.version.manifest.params == {"efSearch": 32}
    assert r3.version.manifest.built_from == f"params:{r1.version.version_id}"

    # only the corpus changed: 2 documents removed, 1 edited, 1 added -> incremental on Flat
    new_text = "automatic indexing of technical reports by computer"
    S.copy_beir(tmp_path / "adi", drop=["5", "6"], edit={"7": new_text}, add={"900": "a catalog of library punched cards"})
    r4 = rebuild(S.spec(tmp_path, tmp_path / "adi", params={"efSearch": 32}), log=log)
    d = r4.decision
    assert d.action == "incremental" and (d.added, d.removed, d.changed) == (["900"], ["5", "6"], ["7"])
    assert "decision: incremental (+1 added, -2 removed, ~1 changed)" in "\n".join(lines)
    v = r4.version.load()
    m = v.manifest
    assert (m.doc_count, m.ntotal, m.tombstones) == (81, 81, 0) and m.built_from == f"incremental:{r3.version.version_id}"
    assert v.docids[4] == v.docids[5] == v.docids[6] == "" and v.docids[-2:] == ["900", "7"]

    # the incremental index answers exactly like a flat index built from scratch on the new corpus
    docids, emb, _ = S.adi_encoded()
    fresh = S.encoder().encode_documents([S.adi().corpus["7"]["title"] + " " + new_text, "a catalog of library punched cards"])
    keep = [i for i, x in enumerate(docids) if x not in ("5", "6", "7")]
    all_ids = [docids[i] for i in keep] + ["7", "900"]
    all_emb = np.vstack([emb[keep], fresh])
    qids, q = S.adi_query_vectors()
    exact = q @ all_emb.T
    scores, got = DenseSearcher(v, S.encoder()).search_vectors(q, 10)
    for row, g, s in zip(exact, got, scores):
        order = np.argsort(-row)[:10]
        assert list(g) == [all_ids[i] for i in order]
        np.testing.assert_allclose(s, row[order], atol=1e-4)
    assert store_versions(tmp_path) == 3  # keep=3

    r5 = rebuild(S.spec(tmp_path, tmp_path / "adi", params={"efSearch": 32}), log=log)
    assert r5.decision.action == "noop"


def store_versions(tmp_path) -> int:
    return len(IndexStore(tmp_path / "store").versions())


def test_plan_decisions(tmp_path):
    docids, emb, _ = S.adi_encoded()
    texts = S.adi().doc_texts()
    hashes = doc_hashes(docids, texts)
    refs = _refs(S.spec(tmp_path))
    base = dict(encoder=S.encoder(), hashes=hashes)
    hnsw = build_index(emb, docids, tmp_path / "hnsw", factory="HNSW32", params={"efConstruction": 40}, **base)
    ivf = build_index(emb, docids, tmp_path / "ivf", factory="IVF2,Flat", params={"nprobe": 2}, **base)

    def decide(version, ids=docids, h=hashes, **kw):
        return plan(S.spec(tmp_path, **kw), version, ids, h, refs)

    assert decide(hnsw, factory="HNSW32", params={"efConstruction": 40}).action == "noop"
    d = decide(hnsw, factory="HNSW32", params={"efConstruction": 80})
    assert d.action == "full" and "build parameters changed" in d.reasons[0]
    d = decide(hnsw, factory="Flat", params={"efConstruction": 40})
    assert d.action == "full" and d.reasons == ["factory changed (HNSW32 -> Flat)"]
    d = decide(hnsw, factory="HNSW32", params={"efConstruction": 40}, side="teacher")
    assert d.action == "full" and "documents side changed" in d.reasons[0]
    other = build_index(emb, docids, tmp_path / "other", manifest_extra={"encoder": {"name": "x", "fingerprint": "f" * 16}})
    d = decide(other)
    assert d.action == "full" and d.reasons[0].startswith("document encoder changed (x@ffff")
    # the token limit: a version built with max_length 128 is stale for a spec without one (and
    # the reverse); versions whose manifest predates the key (hnsw above) are not compared
    short = build_index(emb, docids, tmp_path / "short", manifest_extra={"max_length": 128}, **base)
    d = decide(short)
    assert d.action == "full" and d.reasons == ["document max_length changed (128 -> None tokens)"]
    assert decide(short, max_length=128).action == "noop"

    # HNSW: 5 removals of 82 stay under 10% tombstones; 9 do not
    d = decide(hnsw, docids[5:], hashes[5:], factory="HNSW32", params={"efConstruction": 40})
    assert d.action == "incremental" and "become tombstones (5/82)" in d.reasons[-1]
    d = decide(hnsw, docids[9:], hashes[9:], factory="HNSW32", params={"efConstruction": 40})
    assert d.action == "full" and "tombstones would reach 9/82 > max_tombstones 0.1" in d.reasons[-1]

    # IVF: drift = changed docs since training / trained_on (82); 16 removed = 0.195 <= 0.2, 17 = 0.207
    d = decide(ivf, docids[16:], hashes[16:], factory="IVF2,Flat", params={"nprobe": 2})
    assert d.action == "incremental" and "drift since training 0.195" in d.reasons[-1]
    d = decide(ivf, docids[17:], hashes[17:], factory="IVF2,Flat", params={"nprobe": 2})
    assert d.action == "full" and "drift since training 0.207 > ivf_retrain_drift 0.2: re-train" in d.reasons[-1]

    # a current version that does not load -> full, saying why
    (hnsw.path / "index.faiss").write_bytes(b"garbage")
    d = decide(type(hnsw)(hnsw.path), factory="HNSW32", params={"efConstruction": 40})
    assert d.action == "full" and "does not load" in d.reasons[0] and "index.faiss" in d.reasons[0]


def test_hnsw_incremental_rebuild_keeps_answers_consistent(tmp_path):
    S.adi_encoded()
    S.copy_beir(tmp_path / "adi")
    spec = dict(factory="HNSW32", params={"efConstruction": 80, "efSearch": 128})
    r1 = rebuild(S.spec(tmp_path, tmp_path / "adi", **spec), log=lambda s: None)
    assert r1.decision.action == "full"
    S.copy_beir(tmp_path / "adi", drop=["10", "11", "12"])
    r2 = rebuild(S.spec(tmp_path, tmp_path / "adi", **spec), log=lambda s: None)
    assert r2.decision.action == "incremental"
    m = r2.version.manifest
    assert (m.doc_count, m.ntotal, m.tombstones) == (79, 82, 3)
    s = DenseSearcher(r2.version, S.encoder())
    res = s.batch_search(S.adi().queries, k=79)
    assert all(len(h) == 79 and not {"10", "11", "12"} & {x.docid for x in h} for h in res.values())


def test_cli_build_info_verify_search(tmp_path):
    S.adi_encoded()
    runner = CliRunner()
    root = tmp_path / "cli"
    r = runner.invoke(app, ["build", "--model", "all-MiniLM-L6-v2", "--dataset", str(S.ADI), "--out", str(root),
                            "--factory", "HNSW32", "--param", "efSearch=64", "--param", "efConstruction=100",
                            "--shard-size", str(S.SHARD), "--encodings", str(S.encodings_root())])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(root)])
    assert r.exit_code == 0, r.output
    assert "HNSW32 (faiss: IDMap2,HNSW32), metric ip, normalised True, dim 384" in r.output
    assert '{"efConstruction": 100, "efSearch": 64}' in r.output and "documents    82 (stored vectors 82" in r.output
    r = runner.invoke(app, ["verify", str(root), "--sample", "8"])
    assert r.exit_code == 0, r.output
    assert "OK" in r.output and "8 sampled vectors match a fresh encoding" in r.output
    r = runner.invoke(app, ["search", str(root), S.adi().queries["1"], "--k", "3"])
    assert r.exit_code == 0 and len([ln for ln in r.output.splitlines() if ln.count("\t") == 2]) == 3
    r = runner.invoke(app, ["info", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no index version folder" in r.output


def test_builds_of_other_shard_sizes_do_not_share_an_encoding_cache(tmp_path):
    """Two `rd index build` with one `--encodings` folder and different `--shard-size` encode
    into two cache folders: neither wipes the other's shards."""
    runner = CliRunner()
    enc = tmp_path / "enc"
    base = ["build", "--model", "all-MiniLM-L6-v2", "--dataset", str(S.ADI), "--encodings", str(enc)]
    r = runner.invoke(app, base + ["--out", str(tmp_path / "a"), "--shard-size", "32"])
    assert r.exit_code == 0, r.output
    first = {p: p.stat().st_mtime_ns for p in enc.rglob("emb-*.npy")}
    r = runner.invoke(app, base + ["--out", str(tmp_path / "b"), "--shard-size", "64"])
    assert r.exit_code == 0 and "re-encoding" not in r.output, r.output
    caches = sorted(p.name.rsplit("-", 1)[-1] for p in enc.iterdir())
    assert caches == ["shard32", "shard64"] and len(first) == 3
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    # another --max-length: a third folder (the vectors differ), the first two untouched
    r = runner.invoke(app, base + ["--out", str(tmp_path / "c"), "--shard-size", "32", "--max-length", "16"])
    assert r.exit_code == 0 and "re-encoding" not in r.output, r.output
    assert sorted(p.name.split("-", 2)[-1] for p in enc.iterdir()) == ["len16-shard32", "shard32", "shard64"]
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    # `rd index verify` re-encodes a sample the way the index was built (16 tokens), so it passes
    r = runner.invoke(app, ["verify", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    # --max-length 256 is all-MiniLM-L6-v2's own limit: the same vectors, so the same folder
    r = runner.invoke(app, base + ["--out", str(tmp_path / "e"), "--shard-size", "32", "--max-length", "256"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name.split("-", 2)[-1] for p in enc.iterdir()) == ["len16-shard32", "shard32", "shard64"]
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    r = runner.invoke(app, base + ["--out", str(tmp_path / "d"), "--max-length", "0"])
    assert r.exit_code == 2 and "max_length" in r.output and not (tmp_path / "d").exists(), r.output


def test_moved_store_finds_the_encoding_of_its_own_truncation(tmp_path):
    """A store moved elsewhere (its manifest's encoding_cache path is gone) holds the
    encodings of two builds of one corpus, untruncated and 16 tokens: each index's frozen
    document vectors (query-side training) come from its own cache, never the other's."""
    import shutil

    from retrieval_distill.distill.query_side import load_documents
    from retrieval_distill.index.store import open_version

    runner = CliRunner()
    base = ["build", "--model", "all-MiniLM-L6-v2", "--dataset", str(S.ADI), "--factory", "Flat"]
    for name, extra in (("full", []), ("short", ["--max-length", "16"])):
        r = runner.invoke(app, base + ["--out", str(tmp_path / "a" / name), "--encodings", str(tmp_path / "a" / "encodings")] + extra)
        assert r.exit_code == 0, r.output
    # one store root per index, both caches inside each (as a shared ROOT/encodings would be)
    for name in ("full", "short"):
        shutil.copytree(tmp_path / "a" / "encodings", tmp_path / "a" / name / "encodings")
    shutil.move(tmp_path / "a", tmp_path / "moved")
    for name, n_tokens in (("full", None), ("short", 16)):
        v = open_version(tmp_path / "moved" / name).load()
        assert not (tmp_path / "a").exists() and v.manifest.extra["max_length"] == n_tokens
        docs = load_documents(tmp_path / "moved" / name)
        assert docs.folder.parent == tmp_path / "moved" / name / "encodings"
        assert ("-len16" in docs.folder.name) == (n_tokens == 16)
        stored = v.index.reconstruct_n(0, v.index.ntotal)
        np.testing.assert_allclose(docs.emb, stored, atol=1e-6)


def test_verify_catches_wrong_vectors(tmp_path):
    docids, emb, _ = S.adi_encoded()
    texts = S.adi().doc_texts()
    good = build_index(emb, docids, tmp_path / "good", factory="SQ8", encoder=S.encoder(), texts=texts)
    bad = build_index(emb[::-1], docids, tmp_path / "bad", encoder=S.encoder(), texts=texts)  # rows shuffled
    rep = verify_version(good, corpus=S.adi(), encoder=S.encoder(), sample=6)
    assert rep.ok and rep.min_cosine >= 0.98 and rep.self_recall_at_10 == 1.0, str(rep)
    rep = verify_version(bad, corpus=S.adi(), encoder=S.encoder(), sample=6)
    assert not rep.ok and "bad/index.faiss: stored vector of docid" in rep.problems[0]
    # a corpus that moved on: reported as stale, not corrupt
    ids2 = docids[:-1]
    rep = verify_version(good, corpus=(ids2, texts[:-1]), encoder=S.encoder(), sample=4)
    assert rep.ok and "stale" in rep.warnings[0]
    assert corpus_fingerprint(ids2, doc_hashes(ids2, texts[:-1])) in rep.warnings[0]


def test_rebuild_refuses_concurrent_run(tmp_path):
    spec = S.spec(tmp_path)
    store = IndexStore(spec.root)
    with store.lock():
        with pytest.raises(BlockingIOError, match="another rebuild"):
            rebuild(spec, log=lambda s: None)


def test_bf16_index_manifest_verify_and_dtype_change(tmp_path, monkeypatch):
    """`rd index build --dtype bf16`: the manifest records the dtype and the fp32 check, verify
    passes against an fp32 re-encoding, and a spec back to fp32 rebuilds fully."""
    import retrieval_distill.models.encoder as E

    monkeypatch.setattr(E, "cpu_bf16_flags", lambda: ["avx512_bf16"])  # as on a CPU with native bf16
    runner = CliRunner()
    root = tmp_path / "bf16"
    r = runner.invoke(app, ["build", "--model", "all-MiniLM-L6-v2", "--dataset", str(S.ADI), "--out", str(root),
                            "--shard-size", str(S.SHARD), "--encodings", str(tmp_path / "enc"), "--dtype", "bf16"])
    assert r.exit_code == 0, r.output
    m = IndexStore(root).current().load().manifest
    assert m.extra["dtype"] == "bf16" and m.extra["speed_check"]["ok"] and m.extra["speed_check"]["min_cosine"] >= 0.99
    assert m.extra["encoding_cache"].endswith("-bf16-shard16")  # never the folder an fp32 build of this corpus uses
    assert m.extra["max_length"] is None  # the spec's token limit (the model's own), for rebuild decisions
    rep = verify_version(IndexStore(root).current(), sample=8)
    assert rep.ok, str(rep)
    lines, log = _log()
    res = rebuild(S.spec(tmp_path, S.ADI, root=str(root), encodings=str(tmp_path / "enc")), dry_run=True, log=log)
    assert res.decision.action == "full" and "document encoding dtype changed (bf16 -> fp32)" in res.decision.reasons
    r = runner.invoke(app, ["build", "--model", "all-MiniLM-L6-v2", "--dataset", str(S.ADI), "--out", str(tmp_path / "x"),
                            "--dtype", "int4"])
    assert r.exit_code == 2 and "dtype" in r.output
