"""What a 16-bit ``model.dtype`` does to zeroth-order training: perturbations that round away.

A weight ``w`` held in a dtype of ``p`` significand bits moves under ``w + eps z`` only if
``eps`` is at least half an ulp of ``w`` (about ``2**-p |w|``): bfloat16 (p = 8) rounds
``1e-3`` away on every weight of magnitude 0.5 or more, norm gains at 1.0 included, where
float32 (p = 24) never does. MeZO reports the fp16 version of this as a loss collapse.

For each dtype and eps, on a model built from a named config (seeded, no download) and
fedtune's generated instruction task, it measures:

* ``changed``: the fraction of trainable elements one perturbation ``w + eps z`` changes,
  overall and for the 1-D tensors (norm gains, biases) and the matrices apart;
* ``restore_drift``: the fraction that ``+eps, -2 eps, +eps`` (a central step with lr = 0)
  does not bring back to its start bits (in float32 too: each addition rounds);
* ``update_changed``: the fraction one typical update ``w - lr g z`` (``|g|`` the run's
  median) changes, on the trained weights: below an ulp, an update is lost entirely;
* ``zero_g``: the fraction of central MeZO steps whose two losses are equal (g = 0: the
  step moves nothing);
* the training loss (mean of the steps' ``(L+ + L-) / 2``) over the first and the last 10 %
  of ``--steps`` central MeZO steps (batch ``--batch``, ``--lr``), and the held-out loss after.

Prints the set-up on the first line, then one line per (dtype, eps), the headline last.

Run from the repository root::

    python bench/zo_dtype.py                       # micro-llama, 300 steps, ~2 min on 2 cores
    python bench/zo_dtype.py --model tiny-llama --steps 200
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from fedtune.config import parse_config
from fedtune.data.batches import sample_batch
from fedtune.dtypes import autocast, copy_bits_, to_numpy
from fedtune.rng import derive_seed
from fedtune.workload import Workload, batch_loss, evaluate
from fedtune.zo.mezo import apply_direction_, zo_step


def _bits(params: list[tuple[str, torch.Tensor]]) -> list[np.ndarray]:
    return [to_numpy(t).view(f"u{t.element_size()}").copy() for _, t in params]


def _changed(params: list[tuple[str, torch.Tensor]], before: list[np.ndarray]) -> tuple[float, float, float]:
    """Fraction of elements whose bits differ from ``before``: all, 1-D tensors, matrices."""
    counts = {1: [0, 0], 2: [0, 0]}
    for (_, t), old in zip(params, before):
        now = to_numpy(t).view(old.dtype)
        kind = 1 if t.dim() == 1 else 2
        counts[kind][0] += int((now != old).sum())
        counts[kind][1] += old.size
    total = counts[1][0] + counts[2][0], counts[1][1] + counts[2][1]
    return total[0] / total[1], counts[1][0] / max(1, counts[1][1]), counts[2][0] / max(1, counts[2][1])


def measure(model_name: str, dtype: str, eps: float, steps: int, batch: int, lr: float) -> dict[str, float]:
    cfg = parse_config({
        "seed": 0, "model": {"config": model_name, "dtype": dtype},
        "data": {"num_examples": 2000, "eval_examples": 128, "max_length": 32},
        "algorithm": {"name": "mezo", "eps": eps, "lr": lr},
    })
    workload = Workload(cfg)
    model = workload.build_model()
    params = workload.trainable(model)
    encoded = workload.encode(workload.examples[0])
    start = _bits(params)
    apply_direction_(params, derive_seed(0, "probe"), eps)
    changed, changed_1d, changed_2d = _changed(params, start)
    apply_direction_(params, derive_seed(0, "probe"), -2 * eps)
    apply_direction_(params, derive_seed(0, "probe"), eps)
    drift = _changed(params, start)[0]
    for (_, t), old in zip(params, start):  # back to the start bits for the training run
        copy_bits_(t.data, old.view(to_numpy(t).dtype))

    def loss() -> torch.Tensor:
        with autocast(workload.device, dtype):
            return batch_loss(model, sample_batch(encoded, batch, seed=1, step=step), workload.device)

    with autocast(workload.device, dtype):
        held_out_start = evaluate(model, workload.eval_set, 64, workload.device)["eval_loss"]
    losses, grads, zero_g = [], [], 0
    began = time.perf_counter()
    for step in range(steps):
        result = zo_step(params, loss, seed=derive_seed(0, "bench-step", step), eps=eps, lr=lr)
        losses.append(result.loss)
        grads.append(abs(result.projected_grad))
        zero_g += result.projected_grad == 0.0
    seconds = time.perf_counter() - began
    with autocast(workload.device, dtype):
        held_out = evaluate(model, workload.eval_set, 64, workload.device)["eval_loss"]
    # One typical update, lr * median |g|, on the trained weights: how much of it survives rounding.
    trained = _bits(params)
    apply_direction_(params, derive_seed(0, "probe-update"), lr * float(np.nanmedian(grads)))
    update_changed = _changed(params, trained)[0]
    window = max(1, steps // 10)
    return {
        "changed": changed, "changed_1d": changed_1d, "changed_2d": changed_2d, "restore_drift": drift, "update_changed": update_changed,
        "zero_g": zero_g / steps, "loss_first": float(np.nanmean(losses[:window])),
        "loss_last": float(np.nanmean(losses[-window:])), "eval_start": held_out_start, "eval_loss": held_out, "s_per_step": seconds / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro-llama")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--eps", default="1e-3,1e-2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"device=cpu model={args.model} steps={args.steps} batch={args.batch} lr={args.lr} seed=0 "
          f"torch={torch.__version__} python={platform.python_version()}")
    results = {}
    for dtype in args.dtypes.split(","):
        for eps in map(float, args.eps.split(",")):
            r = measure(args.model, dtype, eps, args.steps, args.batch, args.lr)
            results[(dtype, eps)] = r
            print(f"{dtype:8s} eps={eps:g}: changed {r['changed']:.3f} (1-D {r['changed_1d']:.3f}, "
                  f"matrices {r['changed_2d']:.3f}), restore_drift {r['restore_drift']:.3f}, "
                  f"zero_g {r['zero_g']:.3f}, update_changed {r['update_changed']:.3f}, train loss {r['loss_first']:.4f} -> {r['loss_last']:.4f}, "
                  f"eval loss {r['eval_start']:.4f} -> {r['eval_loss']:.4f}, {r['s_per_step'] * 1e3:.1f} ms/step", flush=True)
    drops = {key: r["eval_start"] - r["eval_loss"] for key, r in results.items()}
    print("headline: held-out loss drop " + ", ".join(f"{d} eps={e:g} {v:+.4f}" for (d, e), v in drops.items()))

if __name__ == "__main__":
    main()
