"""Train a bi-encoder student from teacher scores with the sentence-transformers trainer.

The loop is sentence-transformers' (``SentenceTransformerTrainer``); this module builds the
loss from a config, checkpoints so a killed run resumes (``resume_from_checkpoint``), and
writes a training card (``training_card.json``) and a loss-curve PNG into the model folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from retrieval_distill.utils import write_json_atomic


class LossSpec(BaseModel):
    """One loss term: ``name`` (``margin_mse``, ...) with its options and weight."""

    model_config = ConfigDict(extra="forbid")
    name: str = "margin_mse"
    weight: float = 1.0
    options: dict[str, Any] = Field(default_factory=dict)


class TrainConfig(BaseModel):
    """Student training settings (YAML ``student.train`` section).

    Attributes:
        init: student initialisation (path / bundled alias / hub name).
        losses: loss terms, summed with their weights.
        n_negatives: hard negatives per example.
        negative_depth: negatives sampled from the teacher's top-k non-relevant candidates.
        epochs, batch_size, lr, warmup_ratio, weight_decay: optimiser settings.
        max_seq_length: token limit for passages during training (tokens).
        seed: everything random is seeded with it.
        save_steps: checkpoint interval (steps) for resume after a kill.
    """

    model_config = ConfigDict(extra="forbid")
    init: str = "all-MiniLM-L6-v2"
    losses: list[LossSpec] = Field(default_factory=lambda: [LossSpec()])
    n_negatives: int = 3
    negative_depth: int = 30
    epochs: float = Field(1.0, gt=0)
    batch_size: int = 16
    lr: float = 2e-5
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    weight_decay: float = 0.01
    max_seq_length: int = 256
    seed: int = 13
    save_steps: int = 50


def build_loss(model, specs: list[LossSpec]):
    """Instantiate the loss terms of ``specs`` for ``model`` (a ``SentenceTransformer``).

    Raises:
        ValueError: an unknown loss name.
    """
    from retrieval_distill.distill import losses as L

    known = L.LOSSES if hasattr(L, "LOSSES") else {"margin_mse": L.MarginMSELoss}
    terms = []
    for s in specs:
        if s.name not in known:
            raise ValueError(f"unknown loss {s.name!r}; known: {sorted(known)}")
        terms.append((known[s.name](model, **s.options), s.weight))
    if len(terms) == 1 and terms[0][1] == 1.0:
        return terms[0][0]
    return L.CombinedLoss(model, terms)


TRAINED_QIDS = "trained.qids"  # a model folder's training queries, one qid per line


def trained_qids_file(model) -> Path | None:
    """A model folder's ``trained.qids`` (the folder the model loads from: ``~`` expanded, as
    ``resolve_model`` does), or ``None`` for a hub name, an alias or a folder without one."""
    path = Path(str(model)).expanduser() / TRAINED_QIDS
    return path if path.is_file() else None


def init_trained_qids(init) -> list[str] | None:
    """The queries an initialisation's weights were already fit to: its ``trained.qids`` for a
    student folder written by ``rd student train`` (a student trained from a student is fit
    to both lists), ``[]`` for a model that is no student of this project (a hub name, an
    alias, a folder without a training card), ``None`` for a student folder with a card but no
    ``trained.qids`` (trained before the list was written) or a training checkpoint (its
    ``trainer_state.json``; the queries are in the finished model's folder): unknown.
    """
    from retrieval_distill.data.formats import read_qids

    own = trained_qids_file(init)
    if own is not None:
        return read_qids(own)
    folder = Path(str(init)).expanduser()
    if (folder / "training_card.json").is_file() or (folder / "trainer_state.json").is_file():
        return None  # a student, or a training checkpoint (``<output>.ckpt/checkpoint-N``), that lists no queries
    return []


def train_student(
    cfg: TrainConfig,
    examples: list[dict],
    output_dir: str | os.PathLike,
    card: dict[str, Any] | None = None,
    show_progress: bool = True,
    evaluator=None,
    keep_best: bool = False,
    model=None,
    loss=None,
    trained_qids: Sequence[str] | None = None,
) -> Path:
    """Train a student and save it to ``output_dir`` (a sentence-transformers folder).

    Args:
        cfg: training settings.
        examples: from :func:`retrieval_distill.distill.data.build_examples`.
        output_dir: final model folder; checkpoints go to ``<output_dir>.ckpt`` and a killed
            run resumes from the last one.
        card: extra facts for the training card (teacher, data, dev metrics ...).
        evaluator: optional sentence-transformers evaluator (e.g. the
            ``InformationRetrievalEvaluator`` of :func:`retrieval_distill.distill.job.dev_evaluator`)
            run on the initial model and after every epoch; its primary metric per epoch goes
            into the training card (``dev_per_epoch``) and the loss-curve PNG.
        keep_best: save the epoch with the best evaluator primary metric instead of the last
            step (needs ``evaluator``; Hugging Face ``load_best_model_at_end``, checkpoints per
            epoch); the card records it as ``dev_selected``.
        model: a prepared ``SentenceTransformer`` to train (``None`` loads ``cfg.init``);
            query-side training passes its query tower with a projection.
        loss: a prepared loss module (``None`` builds ``cfg.losses`` with :func:`build_loss`).
        trained_qids: the qids of the training queries (str, in training order). Written to
            the model folder as ``trained.qids`` (one per line) and counted in the card's
            ``trained_qids``, so a teacher built from this model can tell its own training
            queries from the ones it may score out of fold (the ``bi_encoder`` teacher's
            ``cross_fit``). The queries of a student ``cfg.init`` (its own ``trained.qids``) are
            added: these weights were fit to them too. An init student without that list
            leaves the card's ``trained_qids`` null and writes no file (see
            :func:`init_trained_qids`).

    Raises:
        ValueError: ``keep_best`` without an evaluator.

    Returns:
        the model folder.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from retrieval_distill.models import load_sentence_transformer

    if keep_best and evaluator is None:
        raise ValueError("keep_best needs a dev evaluator (dev.each_epoch)")
    metric = _primary_metric(evaluator) if evaluator is not None else None
    if keep_best and metric is None:
        raise ValueError("keep_best needs an evaluator with a fixed main_score_function")
    torch.manual_seed(cfg.seed)
    output_dir = Path(output_dir)
    ckpt_dir = output_dir.with_name(output_dir.name + ".ckpt")
    if model is None:
        model = load_sentence_transformer(cfg.init)
        model.max_seq_length = cfg.max_seq_length
    if loss is None:
        loss = build_loss(model, cfg.losses)
    ds = Dataset.from_list(examples)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_ratio,  # transformers v5: a float below 1 is the warmup ratio
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="epoch" if keep_best else "steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,  # with load_best_model_at_end, HF also keeps the best checkpoint
        logging_steps=5,
        report_to="none",
        disable_tqdm=not show_progress,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        learning_rate_mapping=dict(getattr(loss, "learning_rate_mapping", None) or {}),  # e.g. LEAF projection
        **({"eval_strategy": "epoch"} if evaluator is not None else {}),
        **(
            {"load_best_model_at_end": True, "metric_for_best_model": "eval_" + metric, "greater_is_better": True}
            if keep_best
            else {}
        ),
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss, evaluator=evaluator)
    resume = ckpt_dir.exists() and any(ckpt_dir.glob("checkpoint-*"))
    run_facts = {"config": cfg.model_dump(), "keep_best": keep_best, "evaluator": getattr(evaluator, "name", None),
                 "examples": hashlib.sha256(json.dumps(examples, sort_keys=True, default=str).encode()).hexdigest()}
    _check_resume(ckpt_dir / "run.json", run_facts, resume)
    per_epoch: list[dict] = []
    if evaluator is not None:
        init_file = ckpt_dir / "dev_init.json"  # the init figure survives a kill (resumed runs skip the evaluation)
        if resume and init_file.exists():
            per_epoch.append(json.loads(init_file.read_text()))
        elif not resume:
            init_metrics = evaluator(model)  # prefixes evaluator.primary_metric with the evaluator's name
            metric = evaluator.primary_metric
            per_epoch.append({"epoch": 0.0, "step": 0, metric: float(init_metrics[metric])})
            write_json_atomic(init_file, per_epoch[0])
    t0 = time.time()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.time() - t0
    if evaluator is not None:
        metric = metric or evaluator.primary_metric
        key = "eval_" + metric
        per_epoch += [
            {"epoch": round(float(h["epoch"]), 3), "step": h["step"], metric: float(h[key])}
            for h in trainer.state.log_history
            if key in h
        ]
    selected = None
    if keep_best:
        best_step = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[-1])
        selected = next(e for e in per_epoch if e["step"] == best_step)
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    history = [h for h in trainer.state.log_history if "loss" in h]
    info = {
        "init": cfg.init,
        "losses": [s.model_dump() for s in cfg.losses],
        "loss_citations": {s.name: getattr(t, "citation", "") for s, t in zip(cfg.losses, _terms(loss))},
        "config": cfg.model_dump(),
        "examples": len(examples),
        "steps": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "resumed": bool(resume),
        "seed": cfg.seed,
        "loss_history": [{"step": h["step"], "loss": h["loss"]} for h in history],
        **({"dev_per_epoch": per_epoch, "dev_primary_metric": metric} if evaluator is not None else {}),
        **({"dev_selected": selected} if selected is not None else {}),
        **(card or {}),
    }
    if trained_qids is not None:
        inherited = init_trained_qids(cfg.init)
        if inherited is None:  # weights fit to queries nobody listed: no list rather than a short one
            info["trained_qids"] = None
            info["trained_qids_unknown"] = (f"init {cfg.init!r} is a trained student without {TRAINED_QIDS}: the queries "
                                            "its weights were fit to are unknown, so this model lists none")
        else:
            qids = list(dict.fromkeys([*(str(q) for q in trained_qids), *inherited]))
            (tmp / TRAINED_QIDS).write_text("".join(q + "\n" for q in qids), encoding="utf-8")
            info["trained_qids"] = {"file": TRAINED_QIDS, "count": len(qids),
                                    **({"from_init": len(qids) - len(set(map(str, trained_qids)))} if inherited else {})}
    write_json_atomic(tmp / "training_card.json", info)
    _plot_loss(history, tmp / "loss_curve.png", per_epoch, metric if evaluator is not None else None)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return output_dir


def _check_resume(path: Path, facts: dict, resume: bool) -> None:
    """Record the settings and data a checkpoint folder belongs to (``run.json``) on a fresh
    start; on a resume refuse checkpoints made with other settings or examples (a config
    edited between a kill and the rerun would otherwise be resumed silently, half old, half new).

    Raises:
        ValueError: the checkpoints' settings or examples differ from this run's.
    """
    if not resume:
        write_json_atomic(path, facts)
        return
    if not path.exists():
        return  # checkpoints from before run.json existed: nothing to compare with
    old = json.loads(path.read_text())
    diff = sorted(k for k in facts if old.get(k) != json.loads(json.dumps(facts[k], default=str)))
    if diff:
        raise ValueError(
            f"{path.parent}: the checkpoints were made with other {', '.join(diff)} than this config gives; "
            f"restore the old config to resume, or delete {path.parent} to start again"
        )


def _primary_metric(evaluator) -> str | None:
    """The name an ``InformationRetrievalEvaluator`` will give its primary metric (it sets
    ``primary_metric`` only on its first call): known up front with a ``main_score_function``,
    else ``None`` until the first call."""
    if evaluator.primary_metric:
        return evaluator.primary_metric
    if getattr(evaluator, "main_score_function", None) is None:
        return None
    return f"{evaluator.name}_{evaluator.main_score_function.value}_ndcg@{max(evaluator.ndcg_at_k)}"


def _terms(loss) -> list:
    return [t for t, _ in loss.terms] if hasattr(loss, "terms") else [loss]


def _plot_loss(history: list[dict], path: Path, per_epoch: list[dict] | None = None, metric: str | None = None) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("student training loss" + (f" and dev {metric}" if per_epoch else ""))
    if per_epoch:
        ax2 = ax.twinx()
        ax2.plot([e["step"] for e in per_epoch], [e[metric] for e in per_epoch], "o-", color="tab:orange")
        ax2.set_ylabel(f"dev {metric}", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def update_card(model_dir: str | os.PathLike, **facts: Any) -> None:
    """Add facts (e.g. dev/test metrics) to a model folder's training card."""
    p = Path(model_dir) / "training_card.json"
    card = json.loads(p.read_text()) if p.exists() else {}
    card.update(facts)
    write_json_atomic(p, card)
