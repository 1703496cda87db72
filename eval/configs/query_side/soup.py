"""A uniform model soup (Wortsman et al. 2022, "Model soups: averaging weights of multiple
fine-tuned models improves accuracy without increasing inference time") of query-side
students trained from the same init with different seeds: one query encoder whose weights
are the element-wise mean of theirs. The document side is untouched, so the soup serves
beside the same frozen index; its training card is the first student's, with a ``soup``
entry listing the ingredients (the document-encoder record, which `rd serve` / `rd eval run`
check against the index, is the same for every ingredient and is checked here).

    python eval/configs/query_side/soup.py work/soups/student work/scifact-quick/models/student \\
        work/scifact-quick-s14/models/student work/scifact-quick-s15/models/student

Raises SystemExit with a one-line message when an ingredient is missing, when ingredients
have different parameter names or shapes, or when they were trained against different
document encoders.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, help="the soup's model folder (written atomically)")
    ap.add_argument("students", type=Path, nargs="+", help="sentence-transformers model folders (>= 2)")
    a = ap.parse_args(argv)
    if len(a.students) < 2:
        sys.exit("soup: give at least two students")
    for s in a.students:
        if not (s / "model.safetensors").is_file():
            sys.exit(f"soup: {s}: no model.safetensors (not a trained student folder)")
    from safetensors.torch import load_file, save_file

    from retrieval_distill.distill.query_side import read_card
    from retrieval_distill.utils import atomic_path

    cards = [read_card(s) or {} for s in a.students]
    # the same document encoder and corpus (where each encoding folder lies does not matter)
    docs = {json.dumps({k: v for k, v in (c.get("document_encoder") or {}).items() if k != "encoding"}, sort_keys=True)
            for c in cards}
    if len(docs) != 1:
        sys.exit(f"soup: the students were trained against different document encoders: {sorted(docs)}")
    states = [load_file(str(s / "model.safetensors")) for s in a.students]
    keys = set(states[0])
    for s, st in zip(a.students[1:], states[1:]):
        if set(st) != keys or any(st[k].shape != states[0][k].shape for k in keys):
            sys.exit(f"soup: {s} has other parameters than {a.students[0]}")
    soup = {k: (sum(st[k].double() for st in states) / len(states)).to(states[0][k].dtype) if states[0][k].is_floating_point()
            else states[0][k] for k in keys}
    tmp = a.out.with_name(a.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(a.students[0], tmp, ignore=shutil.ignore_patterns("model.safetensors", "checkpoint-*", "loss_curve.png"))
    save_file(soup, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    card_path = tmp / "training_card.json"
    if card_path.exists():
        card = json.loads(card_path.read_text())
        card["soup"] = {"method": "uniform weight average (Wortsman et al. 2022)", "ingredients": [str(s) for s in a.students]}
        with atomic_path(card_path) as t:
            t.write_text(json.dumps(card, indent=2) + "\n")
    if a.out.exists():
        shutil.rmtree(a.out)
    tmp.rename(a.out)
    print(f"{a.out}: uniform soup of {len(a.students)} students")
    return a.out


if __name__ == "__main__":
    main()
