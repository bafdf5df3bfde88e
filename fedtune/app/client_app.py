"""The zeroth-order ClientApp (torch): sync to the global state, local MeZO steps, report.

Thin on purpose: :mod:`fedtune.client.zo_protocol` decodes the message, drives the client
(:mod:`fedtune.zo.client`) and encodes the reply. The run's config comes from ``fedtune run`` or from ``flwr run``'s run config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedtune import algorithms
from fedtune.app import APP_DIR
from fedtune.client.node_log import extend_sync, remember_sync
from fedtune.client.secagg import secagg_when_asked
from fedtune.client.zo_protocol import (
    answer_evaluate,
    answer_query,
    answer_train,
    is_class_sums_query,
    partition_of,
)
from fedtune.config import RunConfig
from fedtune.runs import config_from_run_config

app = ClientApp(mods=[secagg_when_asked])  # SecAgg+ rounds (privacy.secagg) run through Flower's mod


@app.query()
def query(msg: Message, context: Context) -> Message:
    if is_class_sums_query(msg):  # model.head_init = "centroids": the set-up exchange before round 1
        from fedtune.client.centroids import answer_class_sums

        return answer_class_sums(_config(context)[0], msg, context)
    return answer_query(msg, context)


def _config(context: Context) -> tuple[RunConfig, Path | None]:
    """The run's config (with a deployed node's own ``device``) and run directory."""
    cfg, run_dir = config_from_run_config(context.run_config, APP_DIR)
    if "device" in context.node_config:  # a deployed SuperNode names its own device (docs/deployment.md)
        cfg = dataclasses.replace(cfg, device=str(context.node_config["device"]))
    return cfg, run_dir


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, run_dir = _config(context)
    family = algorithms.get(cfg.algorithm.name).family
    if family == "split":  # split-prompt: one message per local step
        from fedtune.client.split import train_split

        return train_split(cfg, msg, context)
    if family == "lora":  # federated LoRA: its own handler
        from fedtune.client.lora import train_lora

        return train_lora(cfg, msg, context, run_dir)
    entries = extend_sync(msg, context)  # the seed log this node kept: a fresh process needs it
    if partition_of(msg, context)[0] < cfg.ondevice.clients:  # an ONNX device (torch-free)
        from fedtune.app.device_app import handle_train

        reply = handle_train(msg, context, cfg, run_dir)
    else:
        # torch is imported only past this point: a device SuperNode runs this app without it.
        from fedtune.zo.client import client_for

        reply = answer_train(msg, context, cfg, client_for(cfg))
    remember_sync(reply, context, entries)
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation (``eval.federated``): the global model scored on this client's own
    held-out share. ONNX device clients are refused by the config (no logits to score)."""
    cfg, _ = _config(context)
    family = algorithms.get(cfg.algorithm.name).family
    if family == "split":
        raise ValueError("split-prompt has no federated evaluation (the config refuses eval.federated)")
    if family == "lora":
        from fedtune.client.lora import evaluate_lora

        return evaluate_lora(cfg, msg, context)
    from fedtune.zo.client import client_for

    entries = extend_sync(msg, context)  # as for training: the node's kept seed log bridges a fresh process
    reply = answer_evaluate(msg, context, client_for(cfg))
    remember_sync(reply, context, entries)
    return reply
