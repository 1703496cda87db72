"""Corpus encoding (shards, resume, cache) and FAISS index versions on ADI with MiniLM."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import index_support as S
from retrieval_distill.index.build import CorpusError, build_index, encode_corpus
from retrieval_distill.index.manifest import FORMAT_VERSION, IndexFormatError
from retrieval_distill.index.store import IndexVersion


class CountingEncoder:
    """The real MiniLM encoder, counting document batches it is asked to encode."""

    def __init__(self, enc):
        self.enc, self.calls, self.docs = enc, 0, 0

    def __getattr__(self, name):
        return getattr(self.enc, name)

    def encode_documents(self, texts):
        self.calls += 1
        self.docs += len(texts)
        return self.enc.encode_documents(texts)


def test_encode_corpus_shards_match_direct_encoding():
    docids, emb, folder = S.adi_encoded()
    assert docids == list(S.adi().corpus)
    assert emb.shape == (82, 384) and emb.dtype == np.float32
    shards = sorted(p.name for p in folder.glob("emb-*.npy"))
    assert shards == [f"emb-{i:05d}.npy" for i in range(6)]  # ceil(82 / 16)
    assert np.load(folder / "emb-00005.npy").shape == (2, 384)
    state = json.loads((folder / "encoding.json").read_text())
    assert state["complete"] and state["key"]["n"] == 82 and len(state["shards"]) == 6
    direct = S.encoder().encode_documents(S.adi().doc_texts(docids[:5]))
    np.testing.assert_allclose(emb[:5], direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_encode_corpus_reuses_and_resumes(tmp_path):
    docids, emb, folder = S.adi_encoded()
    work = tmp_path / "enc"
    shutil.copytree(folder, work)
    enc = CountingEncoder(S.encoder())
    ids2, emb2 = encode_corpus(enc, S.adi(), work, shard_size=S.SHARD, show_progress=False)
    assert enc.calls == 0 and ids2 == docids  # complete folder with the same key: reused
    np.testing.assert_array_equal(emb2, emb)

    # a kill leaves missing shards; a disk error a corrupt one: only those are re-encoded
    (work / "emb-00002.npy").unlink()
    raw = (work / "emb-00004.npy").read_bytes()
    (work / "emb-00004.npy").write_bytes(raw[: len(raw) // 2])
    untouched = (work / "emb-00000.npy").stat().st_mtime_ns
    ids3, emb3 = encode_corpus(enc, S.adi(), work, shard_size=S.SHARD, show_progress=False)
    assert enc.calls == 2 and enc.docs == 32
    assert (work / "emb-00000.npy").stat().st_mtime_ns == untouched
    np.testing.assert_allclose(emb3, emb, atol=1e-5)

    # a shard written but not yet recorded (killed between rename and state update) is checked and kept
    state = json.loads((work / "encoding.json").read_text())
    del state["shards"]["emb-00003.npy"]
    (work / "encoding.json").write_text(json.dumps(state))
    encode_corpus(enc, S.adi(), work, shard_size=S.SHARD, show_progress=False)
    assert enc.calls == 2


def test_two_jobs_on_one_encoding_folder_encode_once(tmp_path, capsys):
    """A second job on a folder another job is encoding waits on the folder's lock, then
    reuses the first job's shards: nothing encoded twice, no shard written by two jobs."""
    import threading
    import time

    _, emb, _ = S.adi_encoded()
    first_batch = threading.Event()

    class SlowEncoder(CountingEncoder):
        def encode_documents(self, texts):
            first_batch.set()
            time.sleep(0.2)
            return super().encode_documents(texts)

    a, b = SlowEncoder(S.encoder()), CountingEncoder(S.encoder())
    work, out_a = tmp_path / "shared-enc", {}
    job_a = threading.Thread(target=lambda: out_a.update(r=encode_corpus(a, S.adi(), work, shard_size=S.SHARD, show_progress=False)))
    job_a.start()
    assert first_batch.wait(60)
    ids_b, emb_b = encode_corpus(b, S.adi(), work, shard_size=S.SHARD, show_progress=False)
    job_a.join(60)
    assert a.calls == 6 and b.calls == 0  # job B waited for A and read its shards
    assert "an encoding job is already writing this folder" in capsys.readouterr().out
    np.testing.assert_array_equal(emb_b, out_a["r"][1])
    np.testing.assert_allclose(emb_b, emb, atol=1e-5)
    assert (work / ".lock").read_text().strip().isdigit()  # the last holder's pid, for the message


def test_finished_encoding_in_a_read_only_folder_is_read_without_a_lock(tmp_path, monkeypatch):
    """A finished encoding folder on read-only storage (a shared cache) is reused although its
    lock file cannot be made (the tests may run as root, where chmod does not refuse: the
    refusal is simulated at the lock file)."""
    import errno
    import os

    import retrieval_distill.utils as U

    docids, emb, folder = S.adi_encoded()
    work = tmp_path / "ro"
    shutil.copytree(folder, work)
    (work / ".lock").unlink(missing_ok=True)
    real_open = os.open

    def read_only_fs(path, flags, *a):  # creating the lock file fails as on a read-only file system
        if str(path).endswith(".lock") and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(U.os, "open", read_only_fs)
    enc = CountingEncoder(S.encoder())
    ids, out = encode_corpus(enc, S.adi(), work, shard_size=S.SHARD, show_progress=False)
    assert enc.calls == 0 and ids == docids and not (work / ".lock").exists()
    np.testing.assert_array_equal(out, emb)

    def io_error(path, flags, *a):
        if str(path).endswith(".lock"):
            raise OSError(errno.EIO, "I/O error", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(U.os, "open", io_error)
    with pytest.raises(OSError, match="I/O error"):  # any other failure is not swallowed
        encode_corpus(enc, S.adi(), work, shard_size=S.SHARD, show_progress=False)


def test_lock_file_of_another_user_still_locks(tmp_path, monkeypatch):
    """A `.lock` this process may not write (another user made it in a shared folder) is
    locked through a read-only descriptor: a second job is still refused, never let through.
    Simulated at os.open: the tests may run as root, where file modes do not refuse."""
    import errno
    import os

    import retrieval_distill.utils as U

    folder = tmp_path / "shared-out"
    with U.folder_lock(folder, "a scoring job"):  # the other user's job holds the lock
        real_open = os.open

        def no_write(path, flags, *a):
            if str(path).endswith(".lock") and flags & (os.O_RDWR | os.O_WRONLY):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *a)

        monkeypatch.setattr(U.os, "open", no_write)
        with pytest.raises(U.FolderBusyError, match=f"already writing this folder \\(pid {os.getpid()}"):
            with U.folder_lock(folder, "a scoring job"):
                pass
    with U.folder_lock(folder, "a scoring job") as lock:  # free again: taken read-only, pid left as it was
        assert lock.read_text() == str(os.getpid())
    monkeypatch.undo()


def test_encode_corpus_other_corpus_in_same_folder_reencodes(tmp_path):
    _, emb, folder = S.adi_encoded()
    work = tmp_path / "enc"
    shutil.copytree(folder, work)
    enc = CountingEncoder(S.encoder())
    docids = list(S.adi().corpus)[:20]
    ids, out = encode_corpus(enc, (docids, S.adi().doc_texts(docids)), work, shard_size=S.SHARD, show_progress=False)
    assert enc.docs == 20 and ids == docids and out.shape == (20, 384)
    assert sorted(p.name for p in work.glob("emb-*.npy")) == ["emb-00000.npy", "emb-00001.npy"]
    np.testing.assert_allclose(out, emb[:20], atol=1e-5)


def test_encode_corpus_bad_input(tmp_path):
    with pytest.raises(CorpusError, match="empty corpus"):
        encode_corpus(S.encoder(), ([], []), tmp_path / "e")
    with pytest.raises(CorpusError, match=r"duplicate docid 'a' \(documents 1 and 3\)"):
        encode_corpus(S.encoder(), (["a", "b", "a"], ["x", "y", "z"]), tmp_path / "e")


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "SQ8", "IVF4,PQ8x4"])
def test_build_index_versions(tmp_path, factory):
    docids, emb, _ = S.adi_encoded()
    qids, q = S.adi_query_vectors()
    v = build_index(emb, docids, tmp_path / "v1", factory=factory, encoder=S.encoder(), texts=S.adi().doc_texts(),
                    params={"efConstruction": 80, "efSearch": 64, "nprobe": 4}, manifest_extra={"corpus": "adi", "note": "t"})
    v = IndexVersion(v.path).load()
    m = v.manifest
    assert (m.format_version, m.dim, m.metric, m.normalized, m.doc_count, m.ntotal) == (FORMAT_VERSION, 384, "ip", True, 82, 82)
    assert m.encoder.name == "all-MiniLM-L6-v2" and len(m.encoder.fingerprint) == 16 and m.documents_side == "student"
    assert m.extra == {"note": "t"} and m.corpus == "adi" and "faiss-cpu" in m.libraries
    assert (v.path / "docids").read_text().split("\n")[:-1] == docids
    assert m.trained_on == (None if factory in ("Flat", "HNSW32") else 82)  # SQ8 trains its ranges

    # exact search by hand: scores are inner products of normalised vectors
    exact = q @ emb.T
    top = np.argsort(-exact, axis=1)[:, :10]
    scores, labels = v.index.search(q, 10)
    recall = np.mean([len(set(t) & set(lab)) / 10 for t, lab in zip(top, labels)])
    if factory in ("Flat", "HNSW32"):
        assert recall == 1.0
        np.testing.assert_allclose(scores, np.take_along_axis(exact, top, axis=1), atol=1e-5)
    elif factory == "SQ8":
        assert recall >= 0.9
    else:  # 8 sub-quantisers of 4 bits: 4 bytes a vector, coarse but far better than chance (10/82)
        assert recall >= 0.4
        import faiss

        assert faiss.extract_index_ivf(v.index).code_size == 4  # vs 384 * 4 = 1536 bytes a vector flat


def test_pq_polysemous_training_is_off_unless_asked(tmp_path):
    """FAISS's factory turns polysemous training on for 8-bit PQ (minutes of simulated
    annealing that only Hamming filtering uses); builds switch it off, a param turns it on."""
    import faiss

    from retrieval_distill.index.build import new_faiss_index, unwrap

    def pq_of(idx, factory):
        return faiss.downcast_index(faiss.try_extract_index_ivf(idx)) if "IVF" in factory else unwrap(idx)

    for factory in ("IVF4,PQ8", "OPQ8,IVF4,PQ8", "PQ8"):
        raw = faiss.index_factory(384, factory, faiss.METRIC_INNER_PRODUCT)
        assert pq_of(raw, factory).do_polysemous_training is True, factory  # FAISS's default
        assert pq_of(new_faiss_index(factory, 384, "ip", {}), factory).do_polysemous_training is False, factory
        assert pq_of(new_faiss_index(factory, 384, "ip", {"polysemous": True}), factory).do_polysemous_training is True
    # an IVF-PQ version built this way still searches sensibly (ADI, 82 docs, 8 bytes a vector)
    docids, emb, _ = S.adi_encoded()
    qids, q = S.adi_query_vectors()
    v = build_index(emb, docids, tmp_path / "v", factory="IVF2,PQ16x4", encoder=S.encoder(), params={"nprobe": 2})
    top = np.argsort(-(q @ emb.T), axis=1)[:, :10]
    _, labels = v.index.search(q, 10)
    assert np.mean([len(set(t) & set(lab)) / 10 for t, lab in zip(top, labels)]) >= 0.5


def test_build_index_bad_input(tmp_path):
    docids, emb, _ = S.adi_encoded()
    enc = S.encoder()
    with pytest.raises(CorpusError, match="empty corpus"):
        build_index(emb[:0], [], tmp_path / "a", encoder=enc)
    with pytest.raises(CorpusError, match=r"duplicate docid '1'"):
        build_index(emb[:3], ["1", "2", "1"], tmp_path / "b", encoder=enc)
    with pytest.raises(ValueError, match=r"shape \(n_docs=3, dim\)"):
        build_index(emb[:4], ["1", "2", "3"], tmp_path / "c", encoder=enc)
    with pytest.raises(ValueError, match="no encoder named"):
        build_index(emb, docids, tmp_path / "d")
    with pytest.raises(ValueError, match="IVF128 needs at least 128 vectors"):
        build_index(emb, docids, tmp_path / "e", factory="IVF128,Flat", encoder=enc)
    with pytest.raises(ValueError, match="FAISS cannot build"):
        build_index(emb, docids, tmp_path / "f", factory="NotAnIndex7", encoder=enc)
    build_index(emb, docids, tmp_path / "g", encoder=enc)
    with pytest.raises(FileExistsError):
        build_index(emb, docids, tmp_path / "g", encoder=enc)
    assert not list(tmp_path.glob(".*tmp*"))  # failed builds leave no half-written folder


@pytest.fixture()
def flat_version(tmp_path):
    docids, emb, _ = S.adi_encoded()
    return build_index(emb, docids, tmp_path / "v", encoder=S.encoder(), texts=S.adi().doc_texts())


def test_version_errors_name_the_file(flat_version):
    path = flat_version.path
    manifest = json.loads((path / "manifest.json").read_text())

    old = dict(manifest, format_version=1)
    (path / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(IndexFormatError, match=rf"{path}/manifest.json: index format version 1 is older"):
        IndexVersion(path).load()

    no_enc = {k: v for k, v in manifest.items() if k != "encoder"}
    (path / "manifest.json").write_text(json.dumps(no_enc))
    with pytest.raises(IndexFormatError, match=rf"{path}/manifest.json: the manifest names no encoder"):
        IndexVersion(path).load()

    (path / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match=rf"{path}/manifest.json: missing manifest \(an index.faiss without"):
        IndexVersion(path).load()
    (path / "manifest.json").write_text(json.dumps(manifest))
    IndexVersion(path).load()

    lines = (path / "docids").read_text().split("\n")
    lines[5] = lines[2]
    (path / "docids").write_text("\n".join(lines))
    with pytest.raises(IndexFormatError, match=rf"{path}/docids:6: duplicate docid '3' \(first on line 3\)"):
        IndexVersion(path).load()
    (path / "docids").write_text("")
    with pytest.raises(IndexFormatError, match=rf"{path}/docids: empty corpus"):
        IndexVersion(path).load()


def test_bf16_encoding_is_checked_keyed_and_close_to_fp32(tmp_path):
    """dtype bf16 (forced, so it runs on any CPU): the fp32 check runs on the first shard's
    documents before anything is written, its cosines are kept with the shards, the folder's
    key differs from the fp32 one (an fp32 encoding is never reused as bf16), and the vectors
    stay within the floor of the fp32 ones."""
    from retrieval_distill.models.encoder import BF16FidelityError, Encoder

    docids, emb32, _ = S.adi_encoded()
    enc = Encoder("all-MiniLM-L6-v2", show_progress=False, dtype="bf16", force_bf16=True)
    ids, emb = encode_corpus(enc, S.adi(), tmp_path / "bf16", shard_size=S.SHARD, show_progress=False)
    assert ids == docids and emb.dtype == np.float32 and emb.shape == emb32.shape
    state = json.loads((tmp_path / "bf16" / "encoding.json").read_text())
    assert state["key"]["dtype"] == "bf16"
    fp32_state = json.loads((S.adi_encoded()[2] / "encoding.json").read_text())
    assert "dtype" not in fp32_state["key"]  # fp32 keys are those written before dtype existed
    check = state["speed_check"]
    assert check["ok"] and check["n"] == 16 and check["floor"] == 0.99
    cos = np.sum(emb * emb32, axis=1)
    assert check["min_cosine"] >= 0.99 and cos.min() >= 0.99
    assert not np.array_equal(emb, emb32)  # bf16 really ran
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    # a check that cannot pass: refused before any shard is written, and for every later call
    strict = Encoder("all-MiniLM-L6-v2", show_progress=False, dtype="bf16", force_bf16=True, min_cosine=1.01)
    with pytest.raises(BF16FidelityError, match=r"min cosine 0\.9\d+ over 16 documents < 1\.01"):
        encode_corpus(strict, S.adi(), tmp_path / "strict", shard_size=S.SHARD, show_progress=False)
    assert not list((tmp_path / "strict").glob("emb-*.npy"))
    with pytest.raises(BF16FidelityError, match="failed its check"):
        strict.encode_documents(["a document"])


def test_bf16_falls_back_to_fp32_without_native_bf16(monkeypatch, caplog):
    import retrieval_distill.models.encoder as E

    monkeypatch.setattr(E, "cpu_bf16_flags", lambda: [])
    with caplog.at_level("WARNING"):
        enc = E.Encoder("all-MiniLM-L6-v2", show_progress=False, dtype="bf16")
    assert enc.dtype == "fp32" and "no native bf16" in caplog.text
    with pytest.raises(ValueError, match="dtype must be one of"):
        E.Encoder("all-MiniLM-L6-v2", dtype="fp16")
