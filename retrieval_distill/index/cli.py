"""`rd index ...` sub-commands: build, rebuild, info, verify, search, versions, cleanup.

Examples::

    rd index build --model all-MiniLM-L6-v2 --dataset beir/scifact/test --out indexes/built/scifact \\
        --factory HNSW32 --param efConstruction=200 --param efSearch=128
    rd index info indexes/built/scifact
    rd index rebuild indexes/scifact-student.yaml
    rd index verify indexes/built/scifact
    rd index search indexes/built/scifact "what causes scurvy" --k 5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from retrieval_distill.models.encoder import BF16FidelityError

app = typer.Typer(help="index stage: FAISS index versions, rebuild jobs, verification", no_args_is_help=True)


def _parse_params(items: list[str] | None) -> dict:
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--param {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


# what `rd index build` / `rebuild` report as one `error:` line (exit 2): bad input, a folder
# another rebuild holds (BlockingIOError), or one that is not writable or not a folder
_BAD_INPUT = (FileNotFoundError, NotADirectoryError, PermissionError, ValueError, BlockingIOError, BF16FidelityError)


def _fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def build(
    model: str = typer.Option(..., "--model", help="document-side encoder (student, or teacher for asymmetric)"),
    dataset: str = typer.Option(..., "--dataset", help="collection id or BEIR folder"),
    out: Path = typer.Option(..., "--out", help="index store root (versions/, CURRENT)"),
    factory: str = typer.Option("Flat", "--factory", help="Flat | HNSW32 | IVF{n},PQ{m} | SQ8 | any FAISS factory"),
    param: Optional[list[str]] = typer.Option(None, "--param", help="KEY=VALUE: efConstruction, efSearch, nprobe, train_size"),
    query_model: Optional[str] = typer.Option(None, "--query-model", help="query-side encoder (asymmetric serving)"),
    side: str = typer.Option("student", "--side", help="who encodes documents: student | teacher"),
    metric: Optional[str] = typer.Option(None, "--metric", help="ip | l2 (default: from the encoder)"),
    split: Optional[str] = typer.Option(None, "--split"),
    shard_size: int = typer.Option(1024, "--shard-size"),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
    dtype: str = typer.Option("fp32", "--dtype", help="document encoding: fp32 | bf16 (checked against fp32 first; "
                              "fp32 on a CPU without native bf16)"),
    keep: int = typer.Option(3, "--keep", help="versions to keep"),
    backend: str = typer.Option("local", "--backend", help="encoding backend: local | ray"),
    encodings: Optional[Path] = typer.Option(None, "--encodings", help="encoding cache folder (default OUT/encodings)"),
):
    """Encode a corpus (cached, resumable shards) and build + publish a new index version."""
    from retrieval_distill.index.rebuild import IndexSpec, rebuild

    try:
        spec = IndexSpec(
            name=out.name, dataset=dataset, split=split, model=model, query_model=query_model, side=side,
            factory=factory, metric=metric, params=_parse_params(param), root=str(out), keep=keep,
            shard_size=shard_size, batch_size=batch_size, max_length=max_length, dtype=dtype, backend=backend,
            encodings=str(encodings) if encodings else None,
        )
        res = rebuild(spec, force_full=True)
    except _BAD_INPUT as e:
        _fail(str(e))
    typer.echo(f"{res.version.path} ({res.seconds:.1f} s)")


@app.command()
def rebuild(
    spec: Path = typer.Argument(..., help="index spec YAML (see indexes/)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the decision only"),
    full: bool = typer.Option(False, "--full", help="rebuild fully whatever changed"),
):
    """Bring an index up to date with its spec: no-op, params-only, incremental or full; prints why."""
    from retrieval_distill.index.rebuild import rebuild as run

    try:
        res = run(spec, dry_run=dry_run, force_full=full)
    except _BAD_INPUT as e:
        _fail(str(e))
    typer.echo(f"current: {res.version.version_id if res.version else None} ({res.seconds:.1f} s)")


@app.command()
def info(
    root: Path = typer.Argument(..., help="a store root or a version folder"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
):
    """Print the current version's manifest (and the store's versions)."""
    from retrieval_distill.index.manifest import IndexError_
    from retrieval_distill.index.store import IndexStore, open_version

    try:
        v = open_version(root)
        m = v.manifest
    except (FileNotFoundError, IndexError_) as e:
        _fail(str(e))
    if as_json:
        typer.echo(m.model_dump_json(indent=2))
        return
    typer.echo(f"version      {m.version_id}  ({v.path})")
    typer.echo(f"encoder      {m.encoder.name} @ {m.encoder.fingerprint}  (documents by the {m.documents_side})")
    if m.query_encoder and m.query_encoder != m.encoder:
        typer.echo(f"query side   {m.query_encoder.name} @ {m.query_encoder.fingerprint}")
    typer.echo(f"index        {m.factory} (faiss: {m.faiss_factory}), metric {m.metric}, normalised {m.normalized}, dim {m.dim}")
    typer.echo(f"params       {json.dumps(m.params, sort_keys=True)}")
    typer.echo(f"corpus       {m.corpus or '-'}  fingerprint {m.corpus_fingerprint}")
    typer.echo(f"documents    {m.doc_count} (stored vectors {m.ntotal}, tombstones {m.tombstones})")
    size = (v.path / "index.faiss").stat().st_size
    typer.echo(f"size         {size} bytes ({size / max(1, m.ntotal):.1f} bytes/vector)")
    typer.echo(f"built        {m.created_at}, {m.built_from}, build {m.build_seconds:.2f} s, encode {m.encode_seconds:.2f} s")
    if m.trained_on is not None:
        typer.echo(f"trained on   {m.trained_on} docs; changed since: {m.changed_since_train}")
    typer.echo(f"libraries    {', '.join(f'{k} {x}' for k, x in sorted(m.libraries.items()))}")
    store = IndexStore(root)
    if store.versions_dir.is_dir():
        cur = store.current_id()
        typer.echo("versions     " + ", ".join(x.version_id + (" *" if x.version_id == cur else "") for x in store.versions()))
        hw = store.half_written()
        if hw:
            typer.echo("half-written " + ", ".join(p.name for p in hw))


@app.command()
def verify(
    root: Path = typer.Argument(..., help="a store root or a version folder"),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="corpus to compare (default: the manifest's)"),
    sample: int = typer.Option(16, "--sample", help="documents to re-encode"),
):
    """Load a version; check counts, dims and a sample of vectors against a fresh encoding. Exit 1 on failure."""
    from retrieval_distill.index.manifest import IndexError_
    from retrieval_distill.index.store import open_version
    from retrieval_distill.index.verify import verify_version

    try:
        v = open_version(root)
        corpus = None
        if dataset:
            from retrieval_distill.data.collections import load_corpus_collection

            corpus = load_corpus_collection(dataset)
        rep = verify_version(v, corpus=corpus, sample=sample)
    except (FileNotFoundError, IndexError_, ValueError) as e:
        _fail(str(e))
    typer.echo(str(rep))
    if not rep.ok:
        raise typer.Exit(1)


@app.command()
def search(
    root: Path = typer.Argument(..., help="a store root or a version folder"),
    query: str = typer.Argument(...),
    k: int = typer.Option(10, "--k"),
    query_model: Optional[str] = typer.Option(None, "--query-model", help="student query encoder (asymmetric)"),
    param: Optional[list[str]] = typer.Option(None, "--param", help="efSearch=.., nprobe=.."),
):
    """Search the current version with its encoder and print ranked hits."""
    from retrieval_distill.index.manifest import IndexError_
    from retrieval_distill.search.dense import AsymmetricSearcher, DenseSearcher

    try:
        if query_model:
            from retrieval_distill.index.store import open_version
            from retrieval_distill.models.encoder import Encoder

            v = open_version(root)
            s = AsymmetricSearcher(v, Encoder(v.manifest.encoder.name, query_model=query_model), params=_parse_params(param))
        else:
            s = DenseSearcher(root, params=_parse_params(param))
        hits = s.search(query, k)
    except (FileNotFoundError, IndexError_, ValueError) as e:
        _fail(str(e))
    for h in hits:
        typer.echo(f"{h.rank}\t{h.docid}\t{h.score:.4f}")


@app.command()
def cleanup(
    root: Path = typer.Argument(...),
    keep: int = typer.Option(3, "--keep"),
):
    """Remove dead half-written versions and versions beyond --keep (never the current one)."""
    from retrieval_distill.index.store import IndexStore

    for p in IndexStore(root, keep=keep).cleanup():
        typer.echo(f"removed {p}")


if __name__ == "__main__":  # pragma: no cover
    app()
    sys.exit(0)
