"""Seed-federation sync costs: replaying a round, when a checkpoint beats the log, Pro vs plain.

    python bench/replay.py                     # all three figures (~10 min on 2 cores)
    python bench/replay.py --skip-runs         # only the replay timings (~2 min)

Prints ``name=value`` lines, the headline last. Every replay figure is measured twice in
the same run, side by side: ``_old`` is the pure torch/numpy path (what fedtune ran before
the compiled kernel, and still runs where it cannot build; ``fedtune.rng.pure_path``), the
unsuffixed one the path fedtune now takes (``fedtune.rng.fast_kernel``); the two must end
bit-identical (``replay_bits_equal_*``).

- ``replay_round_over_forward``: applying one round's aggregated update (the default
  ``clients_per_round x local_steps`` directions, as distinct seeds of a K=1024 pool) to the
  bench model / one forward of the bench batch (OPT-125m shape, 8 x 128 tokens).
- ``replay_element_updates_per_second_{torch,numpy}``: (directions x parameters) / replay
  time, torch tensors (``fedtune.zo.replay_``) and numpy arrays (the device client's
  ``fedtune.zo.replay_numpy_``). The old numpy path streams the weights once per
  direction, so its rate does not depend on the number of directions: it is timed on the
  first ``--numpy-old-seeds`` directions only (it would take minutes on the whole round).
- ``replay_floor_s``: the round's element updates / the float32 additions per second this
  machine issues on the bench's threads with operands in registers
  (``float32_adds_per_second``, measured by the kernel build's probe): no replay, however
  written, can beat it, since each update is at least one addition.
- ``catchup_replay_vs_checkpoint_breakeven_rounds``: after how many missed rounds sending
  the full weights beats replaying the log, from the measured replay speed and the
  configured link speed (``federation.bandwidth_mbps``; the cost model fedtune's server uses).
- ``fedkseed_pro_over_fedkseed_eval_loss``: final eval loss of FedKSeed-Pro / FedKSeed on the
  default experiment at equal rounds and seeds (two real ``fedtune run`` simulations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
import torch
import transformers

from fedtune import models
from fedtune.config import load_config
from fedtune.rng import fast_kernel, generator, kernel_problem, pure_path
from fedtune.rng.torch_backend import seeded_init
from fedtune.zo import SeedUpdate, candidate_seeds, replay_, replay_numpy_

REPO = Path(__file__).resolve().parents[1]


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def _final_eval_loss(name: str, algorithm: str, rounds: int, out: Path) -> float:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedtune.cli", "run", str(REPO / "simulations" / "tiny-llama.toml"),
           "--set", f"name={name}", "--set", f"output_dir='{out}'", "--set", f"algorithm.name={algorithm}",
           "--set", f"rounds={rounds}"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    return float(records[-1]["eval_loss"])


def _subset(update: SeedUpdate, n: int) -> SeedUpdate:
    return SeedUpdate(update.round, update.keys[:n], update.seeds[:n], update.scalars[:n], update.lr)


def _torch_replays(params, update: SeedUpdate, repeats: int) -> tuple[float, float, bool]:
    """The same update on two copies of the weights, old path then new, then the new path
    timed again on its copy (each repeat adds the update once more): (old s, new s, equal)."""
    old = [(name, p.detach().clone()) for name, p in params]
    new = [(name, p.detach().clone()) for name, p in params]
    with pure_path():
        old_s = _time(lambda: replay_(old, update), repeats=1)
    first_s = _time(lambda: replay_(new, update), repeats=1)
    equal = all(torch.equal(a, b) for (_, a), (_, b) in zip(old, new))
    return old_s, min(first_s, _time(lambda: replay_(new, update), repeats=repeats)), equal


def _numpy_replays(params, update: SeedUpdate, few: SeedUpdate, repeats: int) -> tuple[float, float, float, bool]:
    """The device client's replay on numpy copies: the old path on the first few
    directions, the new one on the same few (bits) and on the whole round (speed)."""
    old = [(name, p.detach().numpy().copy()) for name, p in params]
    new = [(name, a.copy()) for name, a in old]
    with pure_path():
        old_s = _time(lambda: replay_numpy_(old, few), repeats=1)
    few_s = _time(lambda: replay_numpy_(new, few), repeats=1)
    equal = all(np.array_equal(a, b) for (_, a), (_, b) in zip(old, new))
    return old_s, few_s, _time(lambda: replay_numpy_(new, update), repeats=repeats), equal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=20, help="rounds of each default-experiment run")
    parser.add_argument("--skip-runs", action="store_true", help="skip the FedKSeed-Pro comparison runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed replays of the new path (median)")
    parser.add_argument("--numpy-old-seeds", type=int, default=8,
                        help="directions the old numpy path is timed on (its rate is per direction)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("FEDTUNE_REPLAY_THREADS", str(args.threads))  # the numpy path's threads
    cfg = load_config(REPO / "simulations" / "tiny-llama.toml")
    directions = cfg.federation.clients_per_round * cfg.algorithm.local_steps
    K = cfg.algorithm.num_candidates
    kernel = fast_kernel()
    kernel_desc = (f"compiled({'avx2' if kernel.simd else 'portable'})" if kernel is not None
                   else f"unavailable({kernel_problem()})")

    with torch.inference_mode():
        model = models.load_model(config="opt-125m", seed=0).eval()
        params = models.trainable_parameters(model)
        num_params = sum(p.numel() for _, p in params)
        print(
            f"device=cpu threads={args.threads} dtype=float32 model=opt-125m params={num_params:,} "
            f"batch=8x128 directions_per_round={directions} K={K} seed=0 kernel={kernel_desc} "
            f"torch={torch.__version__} transformers={transformers.__version__} numpy={np.__version__}",
            flush=True,
        )
        with seeded_init(0, "bench-batch"):
            ids = torch.randint(0, model.config.vocab_size, (8, 128))
        forward_s = _time(lambda: model(input_ids=ids, labels=ids), repeats=3)
        keys = np.unique(generator(0, "bench-keys").integers(0, K, size=directions)).astype(np.uint64)
        pool = candidate_seeds(0, K)
        scalars = generator(0, "bench-scalars").standard_normal(len(keys)).astype(np.float32)
        update = SeedUpdate(1, keys, pool[keys.astype(np.int64)], scalars, lr=1e-6)

        replay_old_s, replay_s, torch_equal = _torch_replays(params, update, args.repeats)
        few = _subset(update, min(args.numpy_old_seeds, len(keys)))
        numpy_old_s, numpy_few_s, numpy_s, numpy_equal = _numpy_replays(params, update, few, args.repeats)
    add_rate = kernel.add_rate(args.threads) if kernel is not None else float("nan")

    updates = len(keys) * num_params
    few_updates = len(few.keys) * num_params
    bytes_per_s = cfg.federation.bandwidth_mbps * 1e6 / 8
    weights_s = 4 * num_params / bytes_per_s
    entry_bytes = 18 + 6 * len(keys)
    floor_s = updates / add_rate
    print(f"forward_s={forward_s:.3f}")
    print(f"distinct_seeds_per_round={len(keys)}")
    print(f"float32_adds_per_second={add_rate:.3e} (registers, {args.threads} threads)")
    print(f"replay_floor_s={floor_s:.3f}")
    print(f"replay_round_s_old={replay_old_s:.3f}")
    print(f"replay_round_s={replay_s:.3f}")
    print(f"replay_bits_equal_torch={torch_equal}")
    print(f"replay_bits_equal_numpy={numpy_equal} (first {len(few.keys)} directions)")
    print(f"replay_element_updates_per_second_torch_old={updates / replay_old_s:.3e}")
    print(f"replay_element_updates_per_second_torch={updates / replay_s:.3e}")
    print(f"replay_element_updates_per_second_numpy_old={few_updates / numpy_old_s:.3e} "
          f"(first {len(few.keys)} directions)")
    print(f"replay_element_updates_per_second_numpy_same_directions={few_updates / numpy_few_s:.3e}")
    print(f"replay_element_updates_per_second_numpy={updates / numpy_s:.3e}")
    print(f"replay_numpy_new_over_old_rate={(updates / numpy_s) / (few_updates / numpy_old_s):.1f}")
    print(f"replay_round_over_floor={replay_s / floor_s:.2f}")
    print(f"weights_transfer_s={weights_s:.2f} (at bandwidth_mbps={cfg.federation.bandwidth_mbps:g})")
    for suffix, seconds in (("_old", replay_old_s), ("", replay_s)):
        per_round_s = seconds + entry_bytes / bytes_per_s
        print(f"catchup_replay_vs_checkpoint_breakeven_rounds{suffix}={weights_s / per_round_s:.2f}")
    if not args.skip_runs:
        with tempfile.TemporaryDirectory() as tmp:
            plain = _final_eval_loss("plain", "fedkseed", args.rounds, Path(tmp))
            pro = _final_eval_loss("pro", "fedkseed-pro", args.rounds, Path(tmp))
        print(f"fedkseed_final_eval_loss={plain:.4f}")
        print(f"fedkseed_pro_final_eval_loss={pro:.4f}")
        print(f"fedkseed_pro_over_fedkseed_eval_loss={pro / plain:.4f}")
    print(f"replay_round_over_forward_old={replay_old_s / forward_s:.2f}")
    print(f"replay_round_over_forward={replay_s / forward_s:.2f}")


if __name__ == "__main__":
    main()
