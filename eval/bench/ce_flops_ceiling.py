"""How fast can a cross-encoder get on this CPU? FLOPs per pair and the int8 ceiling.

Issue 3 asks the scoring path for >= 3x the pairs/s of plain fp32 ``CrossEncoder.predict``
with nDCG@10 within 0.005. On SciFact the pairs fill the 256-token window, so sorting by
length removes little padding and the cost is the encoder's FLOPs. This benchmark measures,
in one process on the same shapes:

1. the FLOPs of one forward pass of the cross-encoder's encoder on a batch of ``batch`` x
   ``tokens``: the ``nn.Linear`` layers' from the shapes they see (``torch.utils.flop_counter``
   counts the same), attention's two matmuls by formula (4 L^2 d per layer);
2. the time of that forward pass in fp32 (torch), i.e. the achieved GFLOP/s;
3. the same model's ``nn.Linear`` layers alone in fp32 and after dynamic int8 quantisation
   (``torch.ao.quantization.quantize_dynamic``: int8 weights, int8 activations quantised per
   batch, FBGEMM kernels), on the activation shapes of the forward pass.

From these it prints the Amdahl ceiling of "int8 every linear layer, keep the rest":
``1 / ((1 - f) + f / r)`` with ``f`` the linear layers' share of the fp32 time and ``r`` the
int8 speed-up of those layers. Score-preserving paths (length sorting, ONNX fp32, bf16 where
the CPU has no bf16 units) do not cut FLOPs, so this ceiling bounds what int8 can give; a 3x
path would have to remove FLOPs (shorter inputs, fewer layers), which changes the scores.

Timing uses the best of ``rounds`` rounds (the machine is shared). No figure is asserted.

    python eval/bench/ce_flops_ceiling.py --model all-MiniLM-L6-v2 --batch 32 --tokens 256 \\
        --json eval/reports/bench/ce_flops_ceiling.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path


def _best(fn, rounds: int) -> float:
    """Best wall time of ``rounds`` calls of ``fn`` (seconds), after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="backbone (hub name, pip-installed model or folder)")
    ap.add_argument("--batch", type=int, default=32, help="pairs per batch (the baseline's batch_size)")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per pair (the baseline's max_length)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args(argv)

    import torch
    from torch import nn
    from torch.ao.quantization import quantize_dynamic
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel

    from retrieval_distill.models.resolve import resolve_model

    model = AutoModel.from_pretrained(resolve_model(a.model)).eval()
    cfg = model.config
    ids = torch.randint(1000, 20000, (a.batch, a.tokens))
    att = torch.ones_like(ids)

    # 1. FLOPs, and which of them are in nn.Linear (recorded by the shapes each linear sees)
    shapes: list[tuple[nn.Linear, tuple]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, tuple(i[0].shape)))) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(input_ids=ids, attention_mask=att)
    for h in hooks:
        h.remove()
    linear = sum(2 * s[0] * s[1] * m.in_features * m.out_features for m, s in shapes if len(s) == 3)
    # attention's two matmuls (Q K^T and A V): 2 x 2 L^2 d per layer, by formula, because
    # torch's flop counter does not see the CPU scaled-dot-product-attention kernels
    attention = cfg.num_hidden_layers * 4 * a.batch * a.tokens**2 * cfg.hidden_size
    counted = fc.get_total_flops()
    total = linear + attention

    # 2. the whole forward pass in fp32
    with torch.no_grad():
        t_model = _best(lambda: model(input_ids=ids, attention_mask=att), a.rounds)

    # 3. the linear layers alone, fp32 vs dynamic int8, on the same activation shapes
    xs = [torch.randn(*s) for _, s in shapes]
    lins = [m for m, _ in shapes]
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice (moving to torchao)
        warnings.simplefilter("ignore")
        qlins = [quantize_dynamic(nn.Sequential(m), {nn.Linear}, dtype=torch.qint8) for m in lins]

    def run(layers):
        with torch.no_grad():
            for m, x in zip(layers, xs):
                m(x)

    t_lin = _best(lambda: run(lins), a.rounds)
    t_qlin = _best(lambda: run(qlins), a.rounds)
    f = min(t_lin / t_model, 1.0)
    r = t_lin / t_qlin
    ceiling = 1.0 / ((1 - f) + f / r)
    out = {
        "model": a.model,
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "batch": a.batch,
        "tokens": a.tokens,
        "gflop_per_pair": round(total / a.batch / 1e9, 3),
        "linear_share_of_flops": round(linear / total, 3),
        "attention_gflop_per_pair": round(attention / a.batch / 1e9, 3),
        "flop_counter_gflop_per_pair": round(counted / a.batch / 1e9, 3),
        "fp32_forward_s": round(t_model, 3),
        "fp32_pairs_per_s": round(a.batch / t_model, 1),
        "fp32_achieved_gflop_s": round(total / t_model / 1e9, 1),
        "linear_fp32_s": round(t_lin, 3),
        "linear_int8_s": round(t_qlin, 3),
        "linear_share_of_fp32_time": round(f, 3),
        "int8_linear_speedup": round(r, 2),
        "int8_everything_linear_ceiling": round(ceiling, 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    print(
        f"{a.model}: {out['gflop_per_pair']} GFLOP per pair ({a.tokens} tokens), {out['linear_share_of_flops']:.0%} in linear layers\n"
        f"fp32 forward: {out['fp32_pairs_per_s']} pairs/s = {out['fp32_achieved_gflop_s']} GFLOP/s on {out['threads']} threads; "
        f"linear layers {f:.0%} of its time\n"
        f"int8 (dynamic, FBGEMM) linear layers: {r:.2f}x their fp32 time\n"
        f"ceiling of int8 everywhere a linear layer is: {ceiling:.2f}x the fp32 forward (goal 3x)"
    )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
