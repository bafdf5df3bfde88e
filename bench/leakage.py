"""What an honest-but-curious server learns about one client on
``simulations/privacy-leakage.toml``: its topic from a clear LoRA update, clear FedKSeed
scalars, the SecAgg+ sum, and a split-prompt step (with its tokens, from the activations).

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

**split-prompt** (SFPrompt, :mod:`fedtune.algorithms.split_prompt`; the same config with
``algorithm.name = "split-prompt"``, the ``[split]`` defaults but ``split.layer``,
``--split-layer``, 1 by default: micro BERT has 2 blocks; no SecAgg+, which split-prompt does
not declare: the server has to run its blocks on each client's own activations). What the
server receives from each client's first split step of the round (step 0's reply, after the
client's local-loss steps): the activations at the cut ``(B, P+T, H)``, the batch's labels
and attention mask, and the prompt the client ran them with, all in clear:

(d) **the labels**: fedtune's split puts the frozen head on the server with the body, so the
    server needs each batch's labels to take the loss and they travel beside the
    activations. Guess: the majority label of the received batch; with one topic per client
    it is the topic every time (the measured success is the labels the reply carried, not an
    assumed 1). SFPrompt's U-shaped model keeps the tail (classifier) and the labels on the
    device; that variant is not implemented (see the algorithm's docstring), and there
    only (e) would apply.
(e) **the activations**: the server holds the whole model and reads the client's prompt in
    the same reply, so it can compute the cut activations of any text itself. Attack: a
    nearest-centroid token decoder, one centroid per token id of the hidden states at the
    tokens' positions of the server's own held-out set run through the client's blocks with
    that prompt; each received token position is decoded to its nearest centroid (Euclidean).
    ``split_token_recovery`` = the fraction of the client's real, non-special tokens decoded
    right (a token absent from the held-out set cannot be); ``split_token_recovery_baseline``
    = always guessing the held-out set's most frequent token; ``split_tokens_scored`` = how
    many tokens that is over all steps. The topic from the activations
    alone (labels ignored): each decoded row classified by a multinomial naive Bayes fit on the
    held-out set's tokens per label, majority over the batch
    (``split_activation_topic_attack_success``); and what the server computes anyway, its own
    blocks and head on the activations, majority predicted label
    (``split_head_topic_attack_success``: the head is frozen, and micro BERT's is randomly
    initialised, so this one is at chance on this config; a model whose head knows the
    task would do better).

The split step's message is the server's own (:meth:`SplitPrompt._step_message`), answered by
the real client handler (:func:`fedtune.client.split.train_split`) and read by the server's
own decoder (:meth:`SplitPrompt._activations`): Flower's record classes, in this process, no
Flower run.

Success = the fraction of (client, round) pairs whose guess is the client's topic; chance is
1 / labels (each label equally likely for a client). The clients' updates come from the real
client code (:class:`fedtune.lora.client.LoraClient`, :class:`fedtune.zo.client.ZOClient`,
:func:`fedtune.client.split.train_split`) run in this process, from the round's initial
global state, for ``--rounds`` independent rounds (different batch seeds). No Flower run
here: the protocol is not what is measured.

Prints the set-up on the first line, then ``name=value`` lines, the headline last:
``secagg_sum_attack_success`` (goal: about chance). ``--only-split`` runs (d), (e) alone
(about 10 s) and prints no headline. Threads: ``OMP_NUM_THREADS`` if set, else every core.

    python bench/leakage.py                 # about 10 minutes on 2 cores (the FedKSeed attack's forwards)
    python bench/leakage.py --only-split    # the split-prompt lines only
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
from fedtune.data.tokenizer import SPECIAL_TOKENS
from fedtune.lora.client import LoraClient
from fedtune.split.model import num_blocks
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


def split_config(path: str, layer: int) -> RunConfig:
    """The bench's config run as split-prompt: ``[split]`` defaults but ``split.layer`` (micro BERT
    has 2 blocks, so the default 2 is out of range and 1 is the only cut); no SecAgg+, which
    split-prompt does not declare (the server must compute on each client's activations)."""
    return load_config(path, ["algorithm.name=split-prompt", f"split.layer={layer}", "privacy.secagg=false"])


def _majority(values: torch.Tensor, classes: int) -> int:
    """The most common value (ties: the smallest)."""
    return int(torch.bincount(values.long(), minlength=classes).argmax())


def split_attack(cfg: RunConfig, rounds: int, topics: list[int]) -> dict[str, float | int]:
    """The split-prompt attacks (d), (e) on each client's first split step of ``rounds`` rounds.

    The step message is the server's own (:meth:`SplitPrompt._step_message`), answered by the real
    client handler (:func:`fedtune.client.split.train_split`, in process) and decoded by the
    server's own reader (:meth:`SplitPrompt._activations`): the attacks see exactly the reply's
    content. The ground truth (the tokens of the batch) is the client's batch for that step.
    """
    from flwr.app import Context, RecordDict

    from fedtune import wire
    from fedtune._flwr_compat import set_task_identity
    from fedtune.client.split import train_split
    from fedtune.lora.payload import unpack
    from fedtune.server.split_strategy import SplitPrompt, _Client
    from fedtune.split import PROMPT_NAME
    from fedtune.split.client import client_for

    set_task_identity(run_id=1, node_id=0, task_id=1)  # Message outside a Flower run
    server = SplitPrompt(cfg)  # the server's model, initial prompt and labelled held-out set
    split, workload = server.split, server.workload
    prompt_shape = (cfg.section("split").prompt_length, split.hidden_size)
    prompt_length = prompt_shape[0]
    classes = workload.num_labels
    held_out = workload.eval_set
    special = torch.tensor(sorted(set(getattr(workload.tokenizer, "all_special_ids", None)
                                      or range(len(SPECIAL_TOKENS)))))

    def content(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Real, non-special token positions: what the recovery is scored on."""
        return mask.bool() & ~torch.isin(ids, special)

    held_content = content(held_out["input_ids"], held_out["attention_mask"])
    held_tokens = held_out["input_ids"][held_content]
    vocab = held_tokens.unique()  # the tokens the server's data lets it name
    most_frequent = int(torch.bincount(held_tokens).argmax())  # the baseline's constant guess
    # the topic classifier on (decoded) text: multinomial naive Bayes on the held-out set's tokens
    size = int(held_out["input_ids"].max()) + 1
    counts = torch.ones(classes, size)  # add-one smoothing
    for label in range(classes):
        rows = held_out["labels"] == label
        counts[label] += torch.bincount(held_out["input_ids"][rows][held_content[rows]], minlength=size).float()
    log_prob = (counts / counts.sum(1, keepdim=True)).log()

    totals = dict.fromkeys(("label", "head", "activation", "tokens", "recovered", "baseline", "steps"), 0)
    for r in range(1, rounds + 1):
        for p, topic in enumerate(topics):
            msg = server._step_message(r, 0, _Client(p, p, server.prompt))  # round r's first message
            context = Context(1, p, {"partition-id": p, "num-partitions": len(topics)}, RecordDict(), {})
            reply = train_split(cfg, msg, context)  # local-loss steps, then split step 0's forward
            prompt = unpack(reply.content[wire.PROMPT], {PROMPT_NAME: prompt_shape}, "the client's prompt")[PROMPT_NAME]
            hidden, mask, labels = server._activations(reply, prompt_length)  # what the server reads
            truth = client_for(cfg).batch(r, p, len(topics), 0)["input_ids"]  # the client's batch: scoring only
            if truth.shape != mask.shape:
                raise SystemExit(f"client {p}: the reply's batch {tuple(mask.shape)} is not step 0's {tuple(truth.shape)}")
            # (d) the labels that travel beside the activations
            totals["label"] += int(_majority(labels, classes) == topic)
            with torch.no_grad():
                # the server's own half of the step: its blocks and the head on the activations
                totals["head"] += int(_majority(split.top(hidden, mask).argmax(1), classes) == topic)
                # (e) nearest-centroid token decoder, fit on the server's held-out set run through
                # the client's blocks with the prompt the reply carries (the one the client used)
                own = split.bottom(prompt, held_out["input_ids"], held_out["attention_mask"])[:, prompt_length:]
                states = own[held_content]
                centroids = torch.stack([states[held_tokens == v].mean(0) for v in vocab.tolist()])
                scored = content(truth, mask)
                received = hidden[:, prompt_length:]  # the tokens' positions (after the prompt's)
                decoded = torch.zeros_like(truth)
                decoded[scored] = vocab[torch.cdist(received[scored], centroids).argmin(1)]
            totals["tokens"] += int(scored.sum())
            totals["recovered"] += int((decoded[scored] == truth[scored]).sum())
            totals["baseline"] += int((truth[scored] == most_frequent).sum())
            # topic from the activations alone: classify each decoded row, majority over the batch
            guesses = torch.stack([log_prob[:, decoded[i][scored[i]]].sum(1).argmax() for i in range(len(decoded))])
            totals["activation"] += int(_majority(guesses, classes) == topic)
            totals["steps"] += 1
    steps, tokens = totals["steps"], totals["tokens"]
    return {
        "split_label_attack_success": totals["label"] / steps,
        "split_token_recovery": totals["recovered"] / tokens,
        "split_token_recovery_baseline": totals["baseline"] / tokens,
        "split_activation_topic_attack_success": totals["activation"] / steps,
        "split_head_topic_attack_success": totals["head"] / steps,
        "split_tokens_scored": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "simulations" / "privacy-leakage.toml"))
    parser.add_argument("--rounds", type=int, default=2, help="independent rounds (batch seeds) to attack")
    parser.add_argument("--split-layer", type=int, default=1,
                        help="split-prompt's split.layer (the client runs blocks 0 .. layer-1)")
    parser.add_argument("--only-split", action="store_true",
                        help="run the split-prompt attacks (d), (e) alone (no headline: SecAgg+ is not run)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    split_cfg = split_config(args.config, args.split_layer)
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    workload = Workload(cfg)
    topics = _topics(workload, cfg.federation.num_clients)
    chance = 1 / workload.num_labels
    s = split_cfg.section("split")
    print(f"# device=cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads) "
          f"dtype=float32 model={cfg.model.config} data={cfg.data.source} clients={len(topics)} "
          f"labels={workload.num_labels} (one per client) rounds={args.rounds} local_steps={cfg.algorithm.local_steps} "
          f"K={cfg.algorithm.num_candidates} split.layer={s.layer} (of {num_blocks(workload.build_model())} blocks) "
          f"split.prompt_length={s.prompt_length} split.local_loss_steps={s.local_loss_steps} "
          f"split.keep_fraction={s.keep_fraction} batch_size={split_cfg.algorithm.batch_size} seed={cfg.seed} "
          f"torch={torch.__version__}", flush=True)
    print(f"chance={chance:.3f}")
    sums: list[float] = []  # the SecAgg+ sums' successes: the headline
    if not args.only_split:
        lora_clear, lora_sum = lora_attack(cfg, args.rounds, topics)
        print(f"lora_clear_update_attack_success={lora_clear:.3f}", flush=True)
        print(f"lora_secagg_sum_attack_success={lora_sum:.3f}", flush=True)
        zo_clear, zo_sum = fedkseed_attack(cfg, args.rounds, topics)
        print(f"fedkseed_clear_scalars_attack_success={zo_clear:.3f}", flush=True)
        print(f"fedkseed_secagg_sum_attack_success={zo_sum:.3f}", flush=True)
        sums = [lora_sum, zo_sum]
    for name, value in split_attack(split_cfg, args.rounds, topics).items():
        print(f"{name}={value}" if isinstance(value, int) else f"{name}={value:.3f}", flush=True)
    if sums:  # split-prompt has no SecAgg+ sum: it is not in the headline
        print(f"secagg_sum_attack_success={max(sums):.3f}")


if __name__ == "__main__":
    main()
