"""What an honest-but-curious server learns about one client: label inference on
``simulations/privacy-leakage.toml``, from a clear LoRA update, clear FedKSeed scalars, and
the SecAgg+ sum.

Every client holds the examples of one topic (``partition = "by-label"``). The server knows
the model, the seed pool and its own labelled held-out set (the evaluation set) and tries
to name each client's topic (top-1) from what it receives in round 1:

(a) **clear LoRA update** (FedIT): the client's update of the classification head's bias.
    Cross-entropy's gradient w.r.t. the bias is ``softmax - onehot``: training raises the
    bias of the labels the client holds. Guess: ``argmax Δbias``.
(b) **clear FedKSeed scalars**: the client's ``(seed k_s, g_s)`` per step, with ``g_s`` the
    projected gradient of its batch along ``z_{k_s}``. The server computes, for every label
    l, the same projected gradient of its own examples of label l, ``d_l(k_s)`` (two forwards
    each, at the round's global weights), removes the part common to all labels and guesses
    ``argmax_l sum_s g_s (d_l(k_s) - mean_l' d_l'(k_s))``.
(c) **the SecAgg+ sum**: the server gets only the round's weighted mean over all the
    round's clients (what SecAgg+ reveals; tests/privacy/test_secagg_simulation.py checks
    the protocol returns it to within ~1e-6). The same two attacks applied to the mean give
    one guess per round, scored against every client of that round.

Success = the fraction of (client, round) pairs whose guess is the client's topic; chance is
1 / labels (each label equally likely for a client). The clients' updates come from the real
client code (:class:`fedtune.lora.client.LoraClient`, :class:`fedtune.zo.client.ZOClient`)
run in this process, from the round's initial global state, for ``--rounds`` independent
rounds (different batch seeds). No Flower here: the protocol is not what is measured.

Prints the set-up on the first line, then ``name=value`` lines, the headline last:
``secagg_sum_attack_success`` (goal: about chance).

    python bench/leakage.py            # about 10 minutes on 2 cores (the FedKSeed attack's forwards)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import numpy as np
import torch

from fedtune.config import RunConfig, load_config
from fedtune.lora.client import LoraClient
from fedtune.workload import Workload, batch_loss
from fedtune.zo.client import ZOClient
from fedtune.zo.mezo import zo_step
from fedtune.zo.seeds import aggregate


def _topics(workload: Workload, num_clients: int) -> list[int]:
    """Each client's topic: the one label of its by-label partition."""
    labels = workload.partition_labels
    topics = []
    for p in range(num_clients):
        held = {labels[i] for i in workload.partition(p, num_clients)}
        if len(held) != 1:
            raise SystemExit(f"client {p} holds labels {sorted(held)}: the bench needs one label per client")
        topics.append(held.pop())
    return topics


def lora_attack(cfg: RunConfig, rounds: int, topics: list[int]) -> tuple[float, float]:
    """(clear-update success, sum success) of the head-bias attack on FedIT."""
    client = LoraClient(cfg)
    bias = next(n for n, s in client.uplink_shapes.items() if "classifier" in n and n.endswith("bias"))
    global_state = {n: t.detach().clone() for n, t in client.params.items() if n in client.uplink_shapes}
    clear_hits = sum_hits = total = 0
    for r in range(1, rounds + 1):
        deltas, weights = [], []
        for p in range(len(topics)):
            report = client.train(r, p, len(topics), global_state)
            deltas.append((report.state[bias] - global_state[bias]).double().numpy())
            weights.append(report.num_examples)
        mean = np.average(deltas, axis=0, weights=weights)  # what SecAgg+ reveals
        for p, delta in enumerate(deltas):
            clear_hits += int(np.argmax(delta) == topics[p])
            sum_hits += int(np.argmax(mean) == topics[p])
            total += 1
    return clear_hits / total, sum_hits / total


def _label_derivatives(cfg: RunConfig, workload: Workload, keys: np.ndarray, seed_of) -> np.ndarray:
    """``d[s, l]``: the projected gradient of the server's label-l examples along z_{k_s}."""
    model = workload.build_model()
    params = workload.trainable(model)
    held_out = workload.eval_set
    out = np.zeros((len(keys), workload.num_labels))
    for label in range(workload.num_labels):
        rows = (held_out["labels"] == label).nonzero().flatten()[:16]
        batch = {k: v[rows] for k, v in held_out.items()}
        for s, seed in enumerate(seed_of(keys).tolist()):
            result = zo_step(params, lambda b=batch: batch_loss(model, b, workload.device), seed=int(seed),
                             eps=cfg.algorithm.eps, lr=0.0)
            out[s, label] = result.projected_grad
    return out


def _guess(keys: np.ndarray, scalars: np.ndarray, d: dict[int, np.ndarray]) -> int:
    rows = np.stack([d[int(k)] for k in keys])  # (steps, labels)
    rows = rows - rows.mean(axis=1, keepdims=True)  # drop what every label shares
    return int(np.argmax(rows.T @ scalars.astype(np.float64)))


def fedkseed_attack(cfg: RunConfig, rounds: int, topics: list[int]) -> tuple[float, float]:
    """(clear-scalars success, sum success) of the projected-gradient attack on FedKSeed."""
    cfg = dataclasses.replace(cfg, algorithm=dataclasses.replace(cfg.algorithm, name="fedkseed"),
                              privacy=dataclasses.replace(cfg.privacy, secagg=False))
    client = ZOClient(cfg)
    workload = Workload(cfg)
    clear_hits = sum_hits = total = 0
    for r in range(1, rounds + 1):
        reports = []
        for p in range(len(topics)):
            client.sync(0, [], None)  # every client starts from the round's global state
            reports.append(client.train(r, p, len(topics), None))
        keys = np.unique(np.concatenate([rep.keys for rep in reports]))
        d = dict(zip(keys.tolist(), _label_derivatives(cfg, workload, keys, client.seed_of_key)))
        summed = aggregate([(rep.num_examples, rep.keys, rep.scalars) for rep in reports], round=r,
                           lr=cfg.algorithm.lr, seed_of_key=client.seed_of_key)  # what SecAgg+ reveals
        sum_guess = _guess(summed.keys, summed.scalars, d)
        for p, rep in enumerate(reports):
            clear_hits += int(_guess(rep.keys, rep.scalars, d) == topics[p])
            sum_hits += int(sum_guess == topics[p])
            total += 1
    return clear_hits / total, sum_hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "simulations" / "privacy-leakage.toml"))
    parser.add_argument("--rounds", type=int, default=2, help="independent rounds (batch seeds) to attack")
    args = parser.parse_args()
    cfg = load_config(args.config)
    torch.set_num_threads(os.cpu_count() or 1)
    workload = Workload(cfg)
    topics = _topics(workload, cfg.federation.num_clients)
    chance = 1 / workload.num_labels
    print(f"# device=cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores) dtype=float32 "
          f"model={cfg.model.config} data={cfg.data.source} clients={len(topics)} labels={workload.num_labels} "
          f"(one per client) rounds={args.rounds} local_steps={cfg.algorithm.local_steps} "
          f"K={cfg.algorithm.num_candidates} seed={cfg.seed} torch={torch.__version__}", flush=True)
    print(f"chance={chance:.3f}")
    lora_clear, lora_sum = lora_attack(cfg, args.rounds, topics)
    print(f"lora_clear_update_attack_success={lora_clear:.3f}", flush=True)
    print(f"lora_secagg_sum_attack_success={lora_sum:.3f}", flush=True)
    zo_clear, zo_sum = fedkseed_attack(cfg, args.rounds, topics)
    print(f"fedkseed_clear_scalars_attack_success={zo_clear:.3f}", flush=True)
    print(f"fedkseed_secagg_sum_attack_success={zo_sum:.3f}", flush=True)
    print(f"secagg_sum_attack_success={max(lora_sum, zo_sum):.3f}")


if __name__ == "__main__":
    main()
