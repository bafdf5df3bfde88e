"""A client's part of ``model.head_init = "centroids"``: its class sums of the frozen features.

Answers the server's set-up query (:mod:`fedtune.server.centroids`): the label-names model's
normalised mean-pooled sentence features of every training example of the client's partition,
computed with the adapters off (the frozen pretrained encoder), summed per label, and the
count of examples per label.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fedtune import wire
from fedtune.client.zo_protocol import partition_of, train_config
from fedtune.config import RunConfig
from fedtune.lora.client import client_for
from fedtune.models import LabelNameClassifier

__all__ = ["answer_class_sums"]


@torch.no_grad()  # not inference_mode: the partition's tensors it caches are trained on later
def answer_class_sums(cfg: RunConfig, msg: Message, context: Context) -> Message:
    """Reply with this client's per-class feature sums and counts.

    Raises:
        ValueError: if the server runs another configuration.
        TypeError: if the model has no label-names encoder head (Flower turns either into an
            error reply).
    """
    client = client_for(cfg)
    train_config(msg, client.key, "model, data, algorithm or [lora]")
    partition_id, num_partitions = partition_of(msg, context)
    model: Any = client.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, LabelNameClassifier):
        raise TypeError(f"class sums need a label-names encoder head, this model is {type(base).__name__}")
    encoded = client.data(partition_id, num_partitions)
    labels = encoded["labels"].long()
    classes, hidden = base.classifier.weight.shape
    sums = torch.zeros(classes, hidden, dtype=torch.float64)
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    device = next(base.parameters()).device
    with off:
        step = cfg.eval.batch_size
        for first in range(0, len(labels), step):
            ids = encoded["input_ids"][first : first + step].to(device)
            mask = encoded["attention_mask"][first : first + step].to(device)
            sums.index_add_(0, labels[first : first + step], base.features(ids, mask).double().cpu())
    counts = torch.bincount(labels, minlength=classes)
    payload = wire.encode_class_sums(sums.numpy(), counts.numpy())
    return Message(RecordDict({wire.STATE: ConfigRecord({wire.BUNDLE: payload})}), reply_to=msg)
