"""Scale: does memory or a round's time grow with the number of clients that exist?

Runs simulations/scale-10000.toml (FedKSeed, tiny-llama, 10 clients sampled a round, 3
rounds) through ``fedtune run`` with 10, 100, 1,000 and 10,000 clients in all, the same
dataset (40,000 generated examples) split among them, one after the other, and measures:

* peak RSS of the whole run: the sum over every process of the run (the ``fedtune``
  driver with the ServerApp, Ray's processes and its workers), sampled every 0.1 s. The
  processes are found by an environment variable the bench sets and they inherit;
* the round time: the mean ``round_s`` of rounds 2 and 3 (round 1 also builds the model in
  each worker);
* start-up: seconds from launch to the first round's start (``metrics.jsonl``'s round-0
  line appears after discovery and the evaluation before training);
* Flower's overhead: the same rounds (10 clients, same local steps, same server work) run
  in one process by calling the ServerApp's strategy and the ClientApp's handlers directly
  (the in-process grid of the tests: Flower's Message objects, no simulation engine), vs
  the 10-client run in Flower's simulation engine; both without the evaluation time.

Prints ``name=value`` lines, the headline last: ``peak_rss_10000_over_peak_rss_10`` (goal
<= 1.2), ``round_time_10000_over_round_time_10`` (goal <= 1.2), ``startup_seconds_10000``,
``client_steps_per_second`` (Flower) and ``plain_client_steps_per_second``,
``flower_overhead_ratio`` (goal <= 1.3).

Run from the repository root (a few minutes on 2 cores)::

    python bench/scale.py
    python bench/scale.py --sizes 10,1000      # a quick look
    python bench/scale.py --repeats 2          # on a shared machine: each size twice

With ``--repeats R`` the sizes run R times, in turn ascending and descending, and each
figure keeps its best run (the least time, the highest peak memory): load from other jobs
only ever adds time, and alternating the order spreads it over the sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

CONFIG = ROOT / "simulations" / "scale-10000.toml"
TAG = "FEDTUNE_BENCH_TAG"
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tagged_rss(tag: str) -> int:
    """Bytes of resident memory of every process whose environment carries ``TAG=tag``."""
    total, needle = 0, f"{TAG}={tag}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            total += int((proc / "statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def _run(num_clients: int, num_examples: int, out: Path) -> dict[str, Any]:
    name = f"scale-{num_clients}"
    tag = uuid.uuid4().hex
    command = [sys.executable, "-m", "fedtune.cli", "run", str(CONFIG), "--set", f"name={name}",
               "--set", f'output_dir="{out}"', "--set", f"federation.num_clients={num_clients}",
               "--set", f"data.num_examples={num_examples}"]
    env = {**os.environ, TAG: tag, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("FEDTUNE_CONFIG", None)
    env.pop("FEDTUNE_RUN_DIR", None)
    metrics = out / name / "metrics.jsonl"
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, startup = 0, None
    while proc.poll() is None:
        peak = max(peak, _tagged_rss(tag))
        if startup is None and metrics.is_file() and metrics.read_text().strip():
            startup = time.monotonic() - start
        time.sleep(0.1)
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        sys.stderr.write(output[-4000:])
        raise SystemExit(f"`fedtune run` with {num_clients} clients failed with status {proc.returncode}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steady = [r for r in records if r["round"] >= 2]
    return {
        "peak_rss": peak,
        "startup_s": startup if startup is not None else float("nan"),
        "round_s": sum(r["round_s"] for r in steady) / len(steady),
        "train_s": sum(r["round_s"] - r["eval_s"] for r in steady) / len(steady),
        "wall_s": time.monotonic() - start,
    }


def _plain(num_examples: int) -> float:
    """Seconds a steady-state round takes without Flower's engine (evaluation excluded)."""
    from fedtune._flwr_compat import set_task_identity
    from fedtune.config import load_config
    from fedtune.server.strategy import FedKSeed
    from tests.lora.conftest import InProcessGrid

    set_task_identity(run_id=1, node_id=1, task_id=1)
    cfg = load_config(CONFIG, ["federation.num_clients=10", f"data.num_examples={num_examples}"])
    strategy = FedKSeed(cfg, None)
    strategy.assign_partitions = True
    grid = InProcessGrid(cfg, handlers={n: _zo_train(cfg) for n in range(101, 101 + 7 * 10, 7)})
    records: list[dict[str, Any]] = []
    strategy.start_rounds(grid, cfg.rounds, records.append, connect_timeout=1)
    steady = [r for r in records if r["round"] >= 2]
    return sum(r["round_s"] - r["eval_s"] for r in steady) / len(steady)


def _zo_train(cfg: Any) -> Any:
    from fedtune.client.zo_protocol import answer_train
    from fedtune.zo.client import client_for

    return lambda msg, context: answer_train(msg, context, cfg, client_for(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10,100,1000,10000", help="total clients of each run")
    parser.add_argument("--examples", type=int, default=40_000, help="dataset size, the same for every run")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each size (best kept), alternating order")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from fedtune.config import load_config

    cfg = load_config(CONFIG)
    a, f = cfg.algorithm, cfg.federation
    print(f"# {os.cpu_count()} cores; {cfg.model.config}, {args.examples} examples split among all clients, "
          f"{f.clients_per_round} sampled a round, {cfg.rounds} rounds, {a.local_steps} local steps x batch "
          f"{a.batch_size}", flush=True)
    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for repeat in range(args.repeats):
            for n in sizes if repeat % 2 == 0 else sizes[::-1]:
                r = _run(n, args.examples, Path(tmp) / f"r{repeat}")
                best = results.setdefault(n, r)
                for key in ("startup_s", "round_s", "train_s"):
                    best[key] = min(best[key], r[key])
                best["peak_rss"] = max(best["peak_rss"], r["peak_rss"])
                print(f"peak_rss_mib_{n}={r['peak_rss'] / 2**20:.0f}", flush=True)
                print(f"round_seconds_{n}={r['round_s']:.2f}", flush=True)
                print(f"startup_seconds_{n}={r['startup_s']:.1f}", flush=True)
    plain = min(_plain(args.examples) for _ in range(args.repeats))
    steps = f.clients_per_round * a.local_steps
    small, large = min(sizes), max(sizes)
    print(f"client_steps_per_second={steps / results[small]['train_s']:.2f}")
    print(f"plain_client_steps_per_second={steps / plain:.2f}")
    print(f"flower_overhead_ratio={results[small]['train_s'] / plain:.3f}")
    print(f"startup_seconds_{large}={results[large]['startup_s']:.1f}")
    print(f"round_time_{large}_over_round_time_{small}={results[large]['round_s'] / results[small]['round_s']:.3f}")
    print(f"peak_rss_{large}_over_peak_rss_{small}={results[large]['peak_rss'] / results[small]['peak_rss']:.3f}")


if __name__ == "__main__":
    main()
