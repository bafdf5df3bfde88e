"""What Flower's SecAgg+ costs fedtune: round time and upload bytes, secure over plain.

Each contender is a real ``fedtune run`` (fresh process, Flower's simulation engine, the
code path users run), plain and with ``privacy.secagg = true``, side by side in one run:

* FedKSeed: ``simulations/tiny-llama.toml`` (K = 1024 candidates, 10 local steps);
* LoRA: ``simulations/lora-minilm.toml`` with FedIT (all-MiniLM-L6-v2, rank 8 on query and
  value, 10 local steps);

each at 10 and at 50 clients per round (every client sampled: ``num_clients`` =
``clients_per_round``), SecAgg+ with its defaults (every sampled client holds shares,
majority threshold), IID partitions (at 50 clients the configs' Dirichlet splits leave
some clients without examples; a run with a failed client is refused, not timed). A round's time is ``round_s - eval_s`` from metrics.jsonl, the mean
over rounds 2.. (round 1 pays the workers' start-up and model build: the warm-up); upload
bytes are ``bytes_up_per_client`` (every message of the round on Flower's Fleet API framing,
the protocol's four stages included).

Then the downlink under DP + SecAgg+ (issue 18): FedKSeed with ``dp = "distributed"``, 10
clients all sampled every round, 1 local step, ``--downlink-rounds`` rounds (50);
``bytes_down_per_client`` at round 1, 2 and the last, and their ratios
``dp_secagg_downlink_round50_over_round1`` (goal <= 1.1) and ``..._over_round2`` (round 1's
log is empty; from round 2 on a client gets the entries after the state it last confirmed,
each of K noised scalars on an 8-bit grid, ``privacy.update_bits = 8``, instead of the whole
log); ``--downlink-float32`` adds the same run with float32 entries (``..._float32``) before it.

Prints the set-up on the first line, then ``name=value`` lines, the headline last:
``secagg_round_over_plain_round_fedkseed_10`` (the default experiment's size).

Run from the repository root (about 10-15 minutes on 2 cores)::

    python bench/secagg.py
    python bench/secagg.py --rounds 2 --sizes 10     # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

CONFIGS = {
    "fedkseed": (ROOT / "simulations" / "tiny-llama.toml", []),
    "lora": (ROOT / "simulations" / "lora-minilm.toml", ["algorithm.name=fedit"]),
}


def _run(config: Path, out: Path, name: str, overrides: list[str]) -> list[dict[str, Any]]:
    """One `fedtune run`; returns its metrics records."""
    command = [sys.executable, "-m", "fedtune.cli", "run", str(config)]
    for item in [f"name={name}", f'output_dir="{out}"', *overrides]:
        command += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("FEDTUNE_CONFIG", None)
    env.pop("FEDTUNE_RUN_DIR", None)
    result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"`fedtune run` for {name} failed with status {result.returncode}")
    lines = (out / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _measure(records: list[dict[str, Any]], name: str) -> tuple[float, float]:
    """(mean train-round seconds over rounds 2.., mean upload bytes per client)."""
    rounds = [r for r in records if r["round"] >= 2]
    if not rounds:
        raise SystemExit("need at least 2 rounds: round 1 is the warm-up")
    partial = [(r["round"], r["replies"], r["sampled"]) for r in records if r["round"] >= 1 and r["replies"] < r["sampled"]]
    if partial:  # a round with failed clients is not the round being compared
        raise SystemExit(f"{name}: rounds with missing replies (round, replies, sampled): {partial}")
    seconds = sum(r["round_s"] - r["eval_s"] for r in rounds) / len(rounds)
    return seconds, sum(r["bytes_up_per_client"] for r in rounds) / len(rounds)


def _downlink(out: Path, rounds: int, seed: int, float32: bool) -> None:
    """FedKSeed under distributed DP and SecAgg+: downlink bytes per client by round, with the
    log entries on their 8-bit grid (the default) and, with ``float32``, beside float32 entries."""
    config, _ = CONFIGS["fedkseed"]
    for bits in (32, 8) if float32 else (8,):
        records = _run(config, out, f"dp-secagg-downlink-{bits}", [
            f"rounds={rounds}", f"seed={seed}", "federation.num_clients=10", "federation.clients_per_round=10",
            "federation.min_replies=5", f"eval.every={rounds}", 'data.partition="iid"', "algorithm.local_steps=1",
            'algorithm.weighting="uniform"', "privacy.secagg=true", 'privacy.dp="distributed"',
            "privacy.noise_multiplier=1.0", "privacy.dp_clip=1.0", f"privacy.update_bits={bits}",
        ])
        down = {r["round"]: r["bytes_down_per_client"] for r in records if r["round"] >= 1}
        tag = "" if bits == 8 else "_float32"
        for r in (1, 2, rounds):
            print(f"dp_secagg_downlink_bytes_per_client_round{r}{tag}={down[r]:.0f}", flush=True)
        print(f"dp_secagg_downlink_round{rounds}_over_round2{tag}={down[rounds] / down[2]:.3f}", flush=True)
        print(f"dp_secagg_downlink_round{rounds}_over_round1{tag}={down[rounds] / down[1]:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run; round 1 is not timed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50], help="clients per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--downlink-rounds", type=int, default=50, help="rounds of the DP + SecAgg+ downlink run")
    parser.add_argument("--downlink-only", action="store_true", help="only the DP + SecAgg+ downlink run")
    parser.add_argument("--downlink-float32", action="store_true",
                        help="also the downlink run with float32 log entries (privacy.update_bits = 32)")
    args = parser.parse_args()

    import flwr
    import torch

    print(f"# device=cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores) dtype=float32 "
          f"fedkseed=tiny-llama.toml (K=1024) lora=lora-minilm.toml (fedit, rank 8) "
          f"sizes={args.sizes} rounds={args.rounds} (round 1 untimed) seed={args.seed} "
          f"flwr={flwr.__version__} torch={torch.__version__}", flush=True)
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="secagg-bench-") as tmp:
        _downlink(Path(tmp), args.downlink_rounds, args.seed, args.downlink_float32)
        if args.downlink_only:
            return
        for kind, (config, extra) in CONFIGS.items():
            for size in args.sizes:
                common = [*extra, f"rounds={args.rounds}", f"seed={args.seed}", f"federation.num_clients={size}",
                          f"federation.clients_per_round={size}", f"federation.min_replies={max(2, size // 2)}",
                          f"eval.every={args.rounds}", 'data.partition="iid"']
                plain = _measure(_run(config, Path(tmp), f"{kind}-{size}-plain", common), f"{kind}-{size}-plain")
                secure = _measure(_run(config, Path(tmp), f"{kind}-{size}-secagg", [*common, "privacy.secagg=true"]),
                                  f"{kind}-{size}-secagg")
                for label, (s, b) in (("plain", plain), ("secagg", secure)):
                    print(f"{kind}_{size}_{label}_round_s={s:.3f}", flush=True)
                    print(f"{kind}_{size}_{label}_upload_bytes_per_client={b:.0f}", flush=True)
                ratios[f"{kind}_{size}"] = secure[0] / plain[0]
                print(f"secagg_upload_bytes_over_plain_{kind}_{size}={secure[1] / plain[1]:.3f}", flush=True)
                print(f"secagg_round_over_plain_round_{kind}_{size}={ratios[f'{kind}_{size}']:.3f}", flush=True)
    headline = f"fedkseed_{args.sizes[0]}"
    print(f"secagg_round_over_plain_round_{headline}={ratios[headline]:.3f}")


if __name__ == "__main__":
    main()
