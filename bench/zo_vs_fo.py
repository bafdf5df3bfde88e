"""The same weights trained by first-order steps and by MeZO: how far ZO gets on a task.

Why fedtune's zeroth-order clients stay near their zero-shot start on ``news`` (issue 15)
while FedIT reaches ~100 %: is it the parameters ZO may touch, or ZO itself? This bench
takes one small set of weights, PEFT LoRA (``[lora]``: rank 8 on ``query``/``value``) on
the top ``--top`` transformer blocks of the pretrained MiniLM plus the label-name head,
and trains it centrally on the task's training set in two ways:

* **first-order**: AdamW (FedIT's optimiser and LoRA rate, 1e-3), ``--fo-steps`` steps;
* **zeroth-order**: :func:`fedtune.zo.mezo.zo_step` (MeZO, central estimator, Rademacher
  directions, fedtune's own step), ``--zo-steps`` steps, at each rate of ``--zo-lrs``.

The blocks below the tuned ones never change, so the hidden states entering the lowest tuned
block are computed once (checked equal to the full forward, bit for bit) and every step runs
the top blocks alone: a ZO step costs ``top / layers`` of the model's two forwards, which is
what makes thousands of ZO steps affordable here. Batch 16 (the bench's), eps 1e-2 (the
quality bench's ZO setting). Accuracy on the task's 1,000 held-out examples (0.1 point each)
at the end; the zero-shot start is the same for both. Seeds change the data, the LoRA init
and the batches.

Prints the set-up, per-seed lines, then ``name=value`` lines, the headline last:
``zo_minus_fo_accuracy`` (points, mean over seeds, ZO at its best rate per seed: a bound in
ZO's favour).

    python bench/zo_vs_fo.py                     # news, seeds 0,1,2: ~15 min on 2 cores
    python bench/zo_vs_fo.py --quick             # a smoke test: 1 seed, few steps, 200 examples
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import torch

from fedtune.config import load_config
from fedtune.data.batches import sample_batch
from fedtune.lora.adapters import adapter_parameters, inject_lora
from fedtune.rng import derive_seed
from fedtune.workload import Workload
from fedtune.zo.mezo import zo_step

CONFIG = ROOT / "simulations" / "quality.toml"
BATCH, EPS, FO_LR = 16, 1e-2, 1e-3


class TopBlocks:
    """The label-name classifier with LoRA on its top ``top`` blocks, run from cached inputs."""

    def __init__(self, workload: Workload, seed: int, top: int) -> None:
        cfg = workload.cfg
        model = workload.build_model()
        layers = len(model.encoder.encoder.layer)
        if not 1 <= top < layers:
            raise SystemExit(f"--top must be in [1, {layers - 1}], got {top}")
        self.first = layers - top
        self.peft = inject_lora(model, cfg.lora, "seq-cls", seed, layers=list(range(self.first, layers)),
                                layers_pattern="layer")
        self.inner = self.peft.base_model.model  # the LabelNameClassifier, LoRA inside its top blocks
        self.params = sorted(adapter_parameters(self.peft).items())
        self.blocks = self.inner.encoder.encoder.layer[self.first:]

    @torch.no_grad()
    def cache(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """The hidden states entering block ``first`` for every row, ``(N, T, H)``."""
        encoder, rows = self.inner.encoder, encoded["input_ids"].shape[0]
        return torch.cat([
            encoder(input_ids=encoded["input_ids"][s : s + 128], attention_mask=encoded["attention_mask"][s : s + 128],
                    output_hidden_states=True).hidden_states[self.first]
            for s in range(0, rows, 128)
        ])

    def features(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The top blocks on cached inputs, then the classifier's own pooling: its ``features``."""
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for block in self.blocks:
            hidden = block(hidden, attention_mask=additive)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def logits_and_loss(self, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        return self.inner.classify(self.features(hidden, mask), labels)

    @torch.no_grad()
    def accuracy(self, hidden: torch.Tensor, encoded: dict[str, torch.Tensor]) -> float:
        right = 0
        for s in range(0, hidden.shape[0], 256):
            logits = self.logits_and_loss(hidden[s : s + 256], encoded["attention_mask"][s : s + 256]).logits
            right += int((logits.argmax(-1) == encoded["labels"][s : s + 256]).sum())
        return right / hidden.shape[0]


def run_seed(task: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    overrides = [f"data.source={task}", f"seed={seed}"]
    if args.quick:
        overrides += ["data.num_examples=200", "data.eval_examples=200"]
    workload = Workload(load_config(CONFIG, overrides))
    train, held = workload.encode(workload.examples[0]), workload.eval_set
    result: dict[str, Any] = {}

    model = TopBlocks(workload, seed, args.top)
    train_h, held_h = model.cache(train), model.cache(held)  # below the LoRA: the same for every model built
    with torch.no_grad():  # the cached path is the model's own forward
        full = model.inner.features(held["input_ids"][:16], held["attention_mask"][:16])
        pooled = model.features(held_h[:16], held["attention_mask"][:16])
        if not torch.equal(full, pooled):
            raise RuntimeError(f"the cached path differs from the full forward by {(full - pooled).abs().max():.3g}")
    result["zero_shot"] = model.accuracy(held_h, held)
    data = {"hidden": train_h, "attention_mask": train["attention_mask"], "labels": train["labels"]}
    batch_seed = derive_seed(seed, "zo-vs-fo-batches")

    def loss(step: int) -> torch.Tensor:
        batch = sample_batch(data, BATCH, seed=batch_seed, step=step)
        return model.logits_and_loss(batch["hidden"], batch["attention_mask"], batch["labels"]).loss

    params = [p for _, p in model.params]
    optimizer = torch.optim.AdamW(params, lr=FO_LR, weight_decay=0.0)
    start = time.perf_counter()
    for step in range(args.fo_steps):
        optimizer.zero_grad()
        loss(step).backward()
        optimizer.step()
    result["fo"] = model.accuracy(held_h, held)
    result["fo_seconds"] = time.perf_counter() - start
    result["parameters"] = sum(p.numel() for p in params)

    step_seed = derive_seed(seed, "zo-vs-fo-directions")
    for lr in args.zo_lrs:
        model = TopBlocks(workload, seed, args.top)  # the same start as the first-order run (`loss` reads it)
        start = time.perf_counter()
        skipped = 0
        for step in range(args.zo_steps):
            out = zo_step(model.params, lambda step=step: loss(step), seed=derive_seed(step_seed, step), eps=EPS, lr=lr)
            skipped += out.skipped
        result[f"zo@{lr:g}"] = model.accuracy(held_h, held)
        result[f"zo@{lr:g}_seconds"] = time.perf_counter() - start
        result[f"zo@{lr:g}_skipped"] = skipped
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="news")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--top", type=int, default=1, help="tuned transformer blocks, from the top")
    parser.add_argument("--fo-steps", type=int, default=400)
    parser.add_argument("--zo-steps", type=int, default=1500)
    parser.add_argument("--zo-lrs", default="3e-3,1e-2")
    parser.add_argument("--quick", action="store_true", help="1 seed, 20/50 steps, 200 examples")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.zo_lrs = [float(x) for x in args.zo_lrs.split(",")]
    if args.quick:
        seeds, args.fo_steps, args.zo_steps = seeds[:1], 20, 50
    print(f"bench/zo_vs_fo.py: task={args.task} seeds={seeds} top={args.top} fo_steps={args.fo_steps} "
          f"zo_steps={args.zo_steps} zo_lrs={args.zo_lrs} batch={BATCH} eps={EPS} fo_lr={FO_LR} "
          f"torch={torch.__version__} cpu={platform.machine()} threads={torch.get_num_threads()}", flush=True)
    results = []
    for seed in seeds:
        r = run_seed(args.task, seed, args)
        results.append(r)
        zo = "  ".join(f"zo@{lr:g} {100 * r[f'zo@{lr:g}']:.1f} % ({r[f'zo@{lr:g}_seconds']:.0f} s, "
                       f"{r[f'zo@{lr:g}_skipped']} steps skipped on a non-finite loss)" for lr in args.zo_lrs)
        print(f"seed {seed}: {r['parameters']} weights; zero-shot {100 * r['zero_shot']:.1f} %  "
              f"first-order {100 * r['fo']:.1f} % ({r['fo_seconds']:.0f} s)  {zo}", flush=True)

    def stats(key: str) -> str:
        values = [100 * r[key] for r in results]
        return f"{statistics.fmean(values):.2f}" + (f"+-{statistics.stdev(values):.2f}" if len(values) > 1 else "")

    best = [max(r[f"zo@{lr:g}"] for lr in args.zo_lrs) for r in results]
    print(f"tuned_parameters={results[0]['parameters']}")
    print(f"zero_shot_accuracy={stats('zero_shot')}")
    print(f"fo_accuracy={stats('fo')}")
    for lr in args.zo_lrs:
        print(f"zo_lr_{lr:g}_accuracy={stats(f'zo@{lr:g}')}")
    print(f"zo_step_seconds={statistics.fmean(r[f'zo@{args.zo_lrs[0]:g}_seconds'] for r in results) / args.zo_steps:.4f}")
    print(f"fo_step_seconds={statistics.fmean(r['fo_seconds'] for r in results) / args.fo_steps:.4f}")
    print(f"zo_best_minus_zero_shot_accuracy={statistics.fmean(100 * (b - r['zero_shot']) for b, r in zip(best, results)):.2f}")
    print(f"zo_minus_fo_accuracy={statistics.fmean(100 * (b - r['fo']) for b, r in zip(best, results)):.2f}")


if __name__ == "__main__":
    main()
