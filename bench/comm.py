"""Bytes on the wire against accuracy: FedKSeed, dense FedIT and FedIT with each compressor.

Every contender is a real ``fedtune run`` of the same experiment (default:
simulations/lora-minilm.toml: the real all-MiniLM-L6-v2, 4-topic task, Dirichlet(0.1), 20
clients, 5 a round, 10 rounds), differing only in ``--set`` overrides. Bytes are what
``metrics.jsonl`` reports: every Flower message a client sends and receives in a round,
measured on Flower's Fleet-API protobufs (``fedtune.wire.message_bytes``), never estimated
from tensor sizes. Also times :func:`fedtune.wire.encode_bundle` + ``decode_bundle`` on a
10M-element update for each method.

Prints a markdown table (the one in README.md), then ``name=value`` lines, headline last:

* ``fedkseed_bytes_per_client_round`` (up + down; goal <= 18 KB, the FedKSeed paper's figure);
* ``encode_decode_mb_per_s_<method>`` (float32 MB of update per second, encode + decode);
* ``lora_compression_ratio``: dense FedIT upload bytes / compressed upload bytes for the
  compressor with the highest ratio whose final eval accuracy is within 1 point of dense
  FedIT, or whose eval loss is within 2 % of it (goal >= 10). Which compressor that was is
  printed just before it.

Run from the repository root (about 15 minutes on 2 cores)::

    python bench/comm.py
    python bench/comm.py --rounds 3 --only fedit,topk     # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import numpy as np

from bench.lora_rules import _mean, _run
from fedtune import wire
from fedtune.compress import Compressor
from fedtune.config import load_config

# name -> (what it is, --set overrides)
CONTENDERS: dict[str, tuple[str, list[str]]] = {
    "fedkseed": ("FedKSeed, K=1024 (all 22M weights, zeroth-order)",
                 ["algorithm.name=fedkseed", "algorithm.lr=1e-5", "algorithm.eps=1e-3"]),
    "fedit": ("FedIT, dense float32", ["algorithm.name=fedit"]),
    "quantize8": ("FedIT + 8-bit quantisation", ["algorithm.name=fedit", "compress.method=quantize", "compress.bits=8"]),
    "quantize4": ("FedIT + 4-bit quantisation", ["algorithm.name=fedit", "compress.method=quantize", "compress.bits=4"]),
    "quantize2": ("FedIT + 2-bit quantisation", ["algorithm.name=fedit", "compress.method=quantize", "compress.bits=2"]),
    "topk": ("FedIT + top-10 %", ["algorithm.name=fedit", "compress.method=topk", "compress.topk=0.1"]),
    "topk-quantize": ("FedIT + top-10 % + 8-bit",
                      ["algorithm.name=fedit", "compress.method=topk-quantize", "compress.topk=0.1", "compress.bits=8"]),
    "ternary": ("FedIT + ternary, top-10 % (ComPEFT-style)",
                ["algorithm.name=fedit", "compress.method=ternary", "compress.topk=0.1"]),
}
SPEED_METHODS = {
    "dense": Compressor("none"),
    "quantize8": Compressor("quantize", bits=8),
    "topk": Compressor("topk", topk=0.1),
    "topk_quantize": Compressor("topk-quantize", topk=0.1, bits=8),
    "ternary": Compressor("ternary", topk=0.1),
}


def _speed(numel: int, repeats: int) -> dict[str, float]:
    """MB/s of float32 update through compress + encode + decode + decompress."""
    x = np.random.default_rng(0).standard_normal(numel).astype(np.float32)
    shapes = {"update": (numel,)}
    out = {}
    for name, compressor in SPEED_METHODS.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            payload = wire.encode_bundle({"update": compressor(x)})
            decoded = wire.decode_bundle(payload, shapes, "bench")["update"].decompress()
            best = min(best, time.perf_counter() - start)
        assert decoded.shape == x.shape
        out[name] = x.nbytes / 1e6 / best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "simulations" / "lora-minilm.toml"))
    parser.add_argument("--rounds", type=int, help="override the config's rounds (same for every contender)")
    parser.add_argument("--only", help="comma-separated contenders (default: all)")
    parser.add_argument("--numel", type=int, default=10_000_000, help="elements of the timed update")
    args = parser.parse_args()

    common = [f"rounds={args.rounds}"] if args.rounds else []
    cfg = load_config(args.config, common)
    names = args.only.split(",") if args.only else list(CONTENDERS)
    f, a = cfg.federation, cfg.algorithm
    print(f"# {platform.machine()}, {os.cpu_count()} cores; model={cfg.model.path} data={cfg.data.source} "
          f"alpha={cfg.data.alpha} clients={f.num_clients} per_round={f.clients_per_round} rounds={cfg.rounds} "
          f"local_steps={a.local_steps} batch={a.batch_size} rank={cfg.lora.rank} seed={cfg.seed}", flush=True)

    results = {}
    with tempfile.TemporaryDirectory(prefix="comm-bench-") as tmp:
        for name in names:
            records, wall = _run(Path(args.config), Path(tmp), f"comm-{name}", common + CONTENDERS[name][1])
            rounds = [r for r in records if r["round"] > 0]
            results[name] = {
                "up": _mean([r["bytes_up_per_client"] for r in rounds]),
                "down": _mean([r["bytes_down_per_client"] for r in rounds]),
                "accuracy": 100 * rounds[-1]["eval_accuracy"],
                "loss": rounds[-1]["eval_loss"],
                "wall": wall,
            }
            print(f"# {name}: done in {wall:.0f} s", flush=True)

    print("\n| run | up B/client/round | down B/client/round | up vs dense FedIT | final eval acc | final eval loss |")
    print("|---|---:|---:|---:|---:|---:|")
    dense_up = results.get("fedit", {}).get("up", float("nan"))
    for name, r in results.items():
        print(f"| {CONTENDERS[name][0]} | {r['up']:,.0f} | {r['down']:,.0f} | {dense_up / r['up']:.1f}x "
              f"| {r['accuracy']:.2f} % | {r['loss']:.4f} |")
    print()

    for name, r in results.items():
        key = name.replace("-", "_")
        print(f"{key}_bytes_up_per_client_round={r['up']:.0f}")
        print(f"{key}_bytes_down_per_client_round={r['down']:.0f}")
        print(f"{key}_final_accuracy={r['accuracy']:.2f}")
        print(f"{key}_final_eval_loss={r['loss']:.4f}")
    for name, speed in _speed(args.numel, repeats=3).items():
        print(f"encode_decode_mb_per_s_{name}={speed:.0f}")
    if "fedkseed" in results:
        print(f"fedkseed_bytes_per_client_round={results['fedkseed']['up'] + results['fedkseed']['down']:.0f}")
    if "fedit" in results:
        dense = results["fedit"]
        good = {n: dense["up"] / r["up"] for n, r in results.items()
                if n not in ("fedit", "fedkseed")
                and (r["accuracy"] >= dense["accuracy"] - 1.0 or r["loss"] <= dense["loss"] * 1.02)}
        if good:
            best = max(good, key=lambda n: good[n])
            print(f"lora_compression_best={best}")
            print(f"lora_compression_ratio={good[best]:.2f}")
        else:
            print("lora_compression_ratio=nan  # no compressor kept accuracy within 1 point or loss within 2 %")


if __name__ == "__main__":
    main()
