"""The ClientApp's split-prompt train handler: decode a step message, call
:mod:`fedtune.split.client`, encode the reply.

Step ``s`` of round ``r`` (``0 <= s <= algorithm.local_steps``): the message brings the prompt
the client steps from and, for ``s > 0``, the server's gradient of the loss w.r.t. the
activations of step ``s - 1``. The client

1. at ``s = 0`` takes its local-loss steps from the (global) prompt; at ``s > 0`` recomputes
   step ``s - 1``'s forward from the prompt it was sent, backpropagates the gradient into the
   prompt and steps;
2. at ``s < local_steps`` runs step ``s``'s forward and replies with the activations (with
   the batch's labels and mask) and its prompt; at ``s = local_steps`` replies with its
   final prompt and ``num-examples``.

Nothing is kept in the node between messages (see :mod:`fedtune.split.client`).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MetricRecord, RecordDict

from fedtune import wire
from fedtune.client.zo_protocol import partition_of, train_config
from fedtune.config import RunConfig
from fedtune.lora.payload import pack, unpack
from fedtune.split import ACTIVATIONS_NAME, GRADIENT_NAME, PROMPT_NAME
from fedtune.split.client import client_for

__all__ = ["train_split"]


def train_split(cfg: RunConfig, msg: Message, context: Context) -> Message:
    """Answer one split-prompt step message.

    Raises:
        ValueError: if the server runs another configuration or names a step outside
            ``[0, algorithm.local_steps]`` (Flower turns it into an error reply).
        fedtune.wire.WireError: if the prompt or gradient does not have this client's shapes.
    """
    client = client_for(cfg)
    config = train_config(msg, client.key, "model, data, algorithm or [split]")
    server_round, step = wire.read_int(config, wire.ROUND), wire.read_int(config, wire.STEP)
    steps = cfg.algorithm.local_steps
    if not 0 <= step <= steps:
        raise ValueError(f"the server's {wire.STEP!r} must be in [0, algorithm.local_steps={steps}], got {step}")
    partition_id, num_partitions = partition_of(msg, context)
    prompt = unpack(msg.content[wire.PROMPT], {PROMPT_NAME: client.prompt_shape}, "the server's prompt")[PROMPT_NAME]
    content = RecordDict()
    if step == 0:  # SFPrompt's local-loss phase: no traffic
        local = client.local_steps(prompt, server_round, partition_id, num_partitions)
        prompt = local.prompt
        content[wire.METRICS] = MetricRecord({
            wire.LOCAL_LOSS: local.mean_loss, wire.SKIPPED_STEPS: local.skipped,
            wire.KEPT_EXAMPLES: client.kept_examples(partition_id, num_partitions)})
    else:
        previous = client.batch(server_round, partition_id, num_partitions, step - 1)
        rows, tokens = previous["input_ids"].shape
        shape = (int(rows), client.prompt_shape[0] + int(tokens), client.prompt_shape[1])
        gradient = unpack(msg.content[wire.GRADIENT], {GRADIENT_NAME: shape}, "the server's gradient")[GRADIENT_NAME]
        prompt = client.step(prompt, previous, gradient)
    content[wire.PROMPT] = pack({PROMPT_NAME: prompt})
    if step < steps:
        batch = client.batch(server_round, partition_id, num_partitions, step)
        hidden = client.forward(prompt, batch)
        activations = pack({ACTIVATIONS_NAME: hidden})
        activations[wire.LABELS] = [int(y) for y in batch["labels"].tolist()]
        activations[wire.MASK] = [int(v) for v in np.asarray(batch["attention_mask"].cpu()).ravel()]
        content[wire.ACTIVATIONS] = activations
    else:
        content[wire.METRICS] = MetricRecord({wire.NUM_EXAMPLES: client.num_examples(partition_id, num_partitions)})
    return Message(content, reply_to=msg)

