"""Example-level DP for FedKSeed (``privacy.dp = "sample"``, DPZero): accuracy against epsilon.

Each contender is a real ``fedtune run`` (fresh process, Flower's simulation engine) of
``simulations/default.toml`` made small: the pretrained all-MiniLM-L6-v2 with its label-name
head (round 0 is the frozen model's zero-shot accuracy), FedKSeed tuning the head's bias (ten
numbers) on the generated ``news`` task, ``--examples`` training examples on an IID split over
20 clients (so every client holds N = examples / 20), 5 sampled a round, ``--steps`` local
steps of batch 16 a round, ``--rounds`` rounds, 500 eval examples. The contenders differ only
in ``[privacy]``:

* ``sigma0``: no DP (``dp = "none"``), the baseline;
* ``sigma<s>`` for each ``--sigmas`` value: ``dp = "sample"`` with ``noise_multiplier = s``,
  ``dp_clip = --clip`` (each example's projected gradient clipped to [-C, C]).

For each: the final round's ``eval_accuracy`` and ``eval_loss`` and, under DP, ``dp_epsilon``
at ``dp_delta = 1e-5`` (the worst client's, per example: docs/privacy.md). The DP runs draw
their noise and batches from OS entropy: they are not reproducible from the seed, by design,
and one seed of a few rounds says little about differences of a point or two.

Prints the set-up on the first line, then ``name=value`` lines, the headline last:
``accuracy_sigma<largest>_minus_sigma0`` (points of accuracy the most private run gives up).

Run from the repository root (about 8 minutes on 2 cores with the defaults)::

    python bench/dp_zo.py
    python bench/dp_zo.py --rounds 2 --sigmas 2      # a quick check
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from bench.secagg import _run as run_fedtune

CONFIG = ROOT / "simulations" / "default.toml"


def _run(out: Path, name: str, overrides: list[str]) -> list[dict[str, Any]]:
    """One `fedtune run` of CONFIG; returns its metrics records."""
    return run_fedtune(CONFIG, out, name, overrides)


def _label(sigma: float) -> str:
    return f"sigma{sigma:g}".replace(".", "p")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="local steps a round")
    parser.add_argument("--examples", type=int, default=1000, help="training examples over the 20 clients")
    parser.add_argument("--sigmas", default="1,2,4", help="noise multipliers of the DP runs")
    parser.add_argument("--clip", type=float, default=1.0, help="C: each example's scalar clipped to [-C, C]")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",") if s]

    import flwr
    import torch

    common = [f"seed={args.seed}", f"rounds={args.rounds}", f"algorithm.local_steps={args.steps}",
              f"data.num_examples={args.examples}", "data.eval_examples=500", 'data.partition="iid"',
              'algorithm.weighting="uniform"', "eval.every=1", 'device="cpu"']
    print(f"dp_zo: cpu ({os.cpu_count()} cores), float32, MiniLM-L6 label-name head, bias trained (10 params), "
          f"news, {args.examples} train examples / 20 clients (iid), 5 a round, {args.rounds} rounds x "
          f"{args.steps} steps x batch 16, C={args.clip}, delta=1e-5, seed {args.seed}; torch {torch.__version__}, "
          f"flwr {flwr.__version__}, python {platform.python_version()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dp-zo-") as tmp:
        out = Path(tmp)
        for sigma in [0.0, *sigmas]:
            label = _label(sigma)
            privacy = [] if sigma == 0 else ['privacy.dp="sample"', f"privacy.noise_multiplier={sigma}",
                                             f"privacy.dp_clip={args.clip}"]
            records = _run(out, label, common + privacy)
            last = records[-1]
            results[label] = last
            print(f"accuracy_{label}={last['eval_accuracy']:.4f}", flush=True)
            print(f"eval_loss_{label}={last['eval_loss']:.4f}", flush=True)
            if sigma:
                print(f"epsilon_{label}={last['dp_epsilon']:.3g}", flush=True)
        print(f"accuracy_round0={records[0]['eval_accuracy']:.4f}")
    base = results[_label(0.0)]["eval_accuracy"]
    worst = _label(max(sigmas)) if sigmas else _label(0.0)
    print(f"accuracy_{worst}_minus_sigma0={100 * (results[worst]['eval_accuracy'] - base):+.1f}")


if __name__ == "__main__":
    main()
