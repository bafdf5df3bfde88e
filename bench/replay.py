"""Seed-federation sync costs: replaying a round, when a checkpoint beats the log, Pro vs plain.

    python bench/replay.py                     # all three figures (~10 min on 2 cores)
    python bench/replay.py --skip-runs         # only the replay timings (~2 min)

Prints ``name=value`` lines, the headline last:

- ``replay_round_over_forward``: applying one round's aggregated update (the default
  ``clients_per_round x local_steps`` directions, as distinct seeds of a K=1024 pool) to the
  bench model / one forward of the bench batch (OPT-125m shape, 8 x 128 tokens).
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

import numpy as np
import torch
import transformers

from fedtune import models
from fedtune.config import load_config
from fedtune.rng import generator
from fedtune.rng.torch_backend import seeded_init
from fedtune.zo import SeedUpdate, candidate_seeds, replay_

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=20, help="rounds of each default-experiment run")
    parser.add_argument("--skip-runs", action="store_true", help="skip the FedKSeed-Pro comparison runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(REPO / "simulations" / "tiny-llama.toml")
    directions = cfg.federation.clients_per_round * cfg.algorithm.local_steps
    K = cfg.algorithm.num_candidates

    with torch.inference_mode():
        model = models.load_model(config="opt-125m", seed=0).eval()
        params = models.trainable_parameters(model)
        num_params = sum(p.numel() for _, p in params)
        print(
            f"device=cpu threads={args.threads} dtype=float32 model=opt-125m params={num_params:,} "
            f"batch=8x128 directions_per_round={directions} K={K} seed=0 torch={torch.__version__} "
            f"transformers={transformers.__version__}",
            flush=True,
        )
        with seeded_init(0, "bench-batch"):
            ids = torch.randint(0, model.config.vocab_size, (8, 128))
        forward_s = _time(lambda: model(input_ids=ids, labels=ids), repeats=3)
        keys = np.unique(generator(0, "bench-keys").integers(0, K, size=directions)).astype(np.uint64)
        pool = candidate_seeds(0, K)
        scalars = generator(0, "bench-scalars").standard_normal(len(keys)).astype(np.float32)
        update = SeedUpdate(1, keys, pool[keys.astype(np.int64)], scalars, lr=1e-6)
        replay_s = _time(lambda: replay_(params, update), repeats=2)

    replay_rate = len(keys) * num_params / replay_s
    bytes_per_s = cfg.federation.bandwidth_mbps * 1e6 / 8
    weights_s = 4 * num_params / bytes_per_s
    entry_bytes = 18 + 6 * len(keys)
    per_round_s = replay_s + entry_bytes / bytes_per_s
    print(f"forward_s={forward_s:.3f}")
    print(f"replay_round_s={replay_s:.3f}")
    print(f"distinct_seeds_per_round={len(keys)}")
    print(f"replay_elements_per_s={replay_rate:.3e}")
    print(f"weights_transfer_s={weights_s:.2f} (at bandwidth_mbps={cfg.federation.bandwidth_mbps:g})")
    print(f"catchup_replay_vs_checkpoint_breakeven_rounds={weights_s / per_round_s:.2f}")
    if not args.skip_runs:
        with tempfile.TemporaryDirectory() as tmp:
            plain = _final_eval_loss("plain", "fedkseed", args.rounds, Path(tmp))
            pro = _final_eval_loss("pro", "fedkseed-pro", args.rounds, Path(tmp))
        print(f"fedkseed_final_eval_loss={plain:.4f}")
        print(f"fedkseed_pro_final_eval_loss={pro:.4f}")
        print(f"fedkseed_pro_over_fedkseed_eval_loss={pro / plain:.4f}")
    print(f"replay_round_over_forward={replay_s / forward_s:.2f}")


if __name__ == "__main__":
    main()
