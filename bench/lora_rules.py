"""Compare the federated-LoRA rules on simulations/lora-minilm.toml: FedIT, FFA-LoRA, LoRA-FAIR
and centralised LoRA, at equal rounds and seed.

Each contender is a real ``fedtune run`` of the same config in Flower's simulation engine
(fresh process, the code path users run), differing only in ``--set`` overrides:

* ``fedit``, ``ffa-lora``, ``lorafair``: ``algorithm.name``;
* ``hetlora``: heterogeneous ranks 2, 4 and 8 (a third of the clients each) under the same
  global rank 8;
* ``central`` (the upper bound): one client holding the union of the data, FedIT (the
  average of one adapter is that adapter, so it is plain local LoRA training), taking
  ``clients_per_round x local_steps`` steps a round: the federation's whole round of work,
  done sequentially on all the data. Same rounds, same seed, same evaluation.

Reported per contender from its ``metrics.jsonl``: final eval accuracy (the last round),
the mean accuracy of the last three rounds (less noisy under Dirichlet(0.1)), the
aggregation bias ‖Σ p_k B_k A_k − B A‖_F / ‖Σ p_k B_k A_k‖_F before and after the rule's
correction (mean over rounds), bytes per client per round (serialized Flower messages)
and wall time (the whole ``fedtune run``, Ray start-up included). There is no warm-up run:
every contender is a fresh process and pays the same start-up.

Prints the set-up on the first line, then ``name=value`` lines, the headline last:
``lorafair_minus_fedit_accuracy`` (accuracy points; goal > 0) and
``central_minus_lorafair_accuracy`` (goal <= 2).

Run from the repository root (about 6-8 minutes on 2 cores)::

    python bench/lora_rules.py
    python bench/lora_rules.py --rounds 3     # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from fedtune.config import load_config

RULES = ("fedit", "ffa-lora", "lorafair")


def _run(config: Path, out: Path, name: str, overrides: list[str]) -> tuple[list[dict[str, Any]], float]:
    """One `fedtune run`; returns its metrics records and wall seconds."""
    sets = [f"name={name}", f'output_dir="{out}"', *overrides]
    command = [sys.executable, "-m", "fedtune.cli", "run", str(config)]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("FEDTUNE_CONFIG", None)
    env.pop("FEDTUNE_RUN_DIR", None)
    start = time.perf_counter()
    result = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"`fedtune run` for {name} failed with status {result.returncode}")
    lines = (out / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()], wall


def _mean(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else float("nan")


def _summary(records: list[dict[str, Any]], wall: float) -> dict[str, float]:
    rounds = [r for r in records if r["round"] > 0]
    accuracies = [r["eval_accuracy"] for r in rounds if r.get("eval_accuracy") is not None]
    return {
        "final_accuracy": 100 * rounds[-1]["eval_accuracy"],
        "last3_accuracy": 100 * _mean(accuracies[-3:]),
        "bias_before": _mean([r.get("bias_before") for r in rounds]),
        "bias_after": _mean([r.get("bias_after") for r in rounds]),
        "bytes_up_per_client_round": _mean([r["bytes_up_per_client"] for r in rounds]),
        "bytes_down_per_client_round": _mean([r["bytes_down_per_client"] for r in rounds]),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "simulations" / "lora-minilm.toml"))
    parser.add_argument("--rounds", type=int, help="override the config's rounds (same for every contender)")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    args = parser.parse_args()

    common = [f"rounds={args.rounds}"] if args.rounds else []
    common += [f"seed={args.seed}"] if args.seed is not None else []
    cfg = load_config(args.config, common)
    f, a = cfg.federation, cfg.algorithm

    import peft
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() and cfg.device in ("auto", "cuda") else "cpu"
    print(
        f"# device={device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores) "
        f"dtype=float32{' + autocast' if device == 'cuda' else ''} model={cfg.model.path} "
        f"data={cfg.data.source} n={cfg.data.num_examples} eval={cfg.data.eval_examples} "
        f"alpha={cfg.data.alpha} clients={f.num_clients} per_round={f.clients_per_round} "
        f"rounds={cfg.rounds} local_steps={a.local_steps} batch={a.batch_size} lr={a.lr} "
        f"rank={cfg.lora.rank} seed={cfg.seed} torch={torch.__version__} "
        f"transformers={transformers.__version__} peft={peft.__version__}",
        flush=True,
    )
    central = [
        "algorithm.name=fedit", "federation.num_clients=1", "federation.clients_per_round=1",
        "federation.min_replies=1", 'data.partition="iid"',
        f"algorithm.local_steps={f.clients_per_round * a.local_steps}",
    ]
    contenders = {rule: [f"algorithm.name={rule}", "lora.two_phase=false"] for rule in RULES}
    contenders["hetlora"] = ["algorithm.name=hetlora", "hetlora.ranks=[2, 4, 8]"]  # a third of the clients each
    contenders["central"] = central
    results = {}
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        for name, overrides in contenders.items():
            records, wall = _run(Path(args.config), Path(tmp), f"bench-{name}", common + overrides)
            results[name] = _summary(records, wall)
            for key, value in results[name].items():
                print(f"{name.replace('-', '_')}_{key}={value:.4f}", flush=True)

    fair, fedit, central_acc = (results[n]["final_accuracy"] for n in ("lorafair", "fedit", "central"))
    het = results["hetlora"]
    print(f"hetlora_minus_fedit_last3_accuracy={het['last3_accuracy'] - results['fedit']['last3_accuracy']:.2f}")
    print(f"hetlora_bias={het['bias_after']:.4f}")
    print(f"hetlora_bytes_up_over_fedit={het['bytes_up_per_client_round'] / results['fedit']['bytes_up_per_client_round']:.4f}")
    print(f"lorafair_bias_reduction={1 - results['lorafair']['bias_after'] / results['lorafair']['bias_before']:.4f}")
    print(f"lorafair_minus_fedit_last3_accuracy="
          f"{results['lorafair']['last3_accuracy'] - results['fedit']['last3_accuracy']:.2f}")
    print(f"central_minus_lorafair_accuracy={central_acc - fair:.2f}")
    print(f"lorafair_minus_fedit_accuracy={fair - fedit:.2f}")


if __name__ == "__main__":
    main()
