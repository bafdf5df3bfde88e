"""SFPrompt: split federated prompt tuning for devices smaller than the model.

Cao, Zhu and Gong, "SFPrompt: Communication-Efficient Split Federated Fine-Tuning for Large
Pre-Trained Models over Resource-Limited Devices", 2024 (https://arxiv.org/abs/2407.17533).
The frozen model is cut after block ``split.layer``. A client holds the token embeddings,
blocks ``0 .. layer-1`` and a soft prompt of ``split.prompt_length`` vectors prepended to
the token embeddings (the attention mask extended); the server holds the remaining blocks
and the seq-cls head. Each split step the client sends its activations at the cut (with the
batch's labels and mask) in a Flower message, the server finishes the forward, takes the
loss, backpropagates to the activations and sends their gradient back; the client
backpropagates it into its prompt and steps (SGD, ``algorithm.lr``). After
``algorithm.local_steps`` split steps the server averages the clients' prompts (FedAvg,
``algorithm.weighting``) into the next global prompt and scores the whole model with it.

What is implemented of the paper, and how:

- **Local-loss updates**: before its split steps each round, a client takes
  ``split.local_loss_steps`` steps alone, with the loss of the head applied to its own
  activations (the server's blocks skipped: :meth:`fedtune.split.model.SplitModel.local_logits`),
  as the paper's phase 1 trains the client's parts against a local loss with no traffic.
- **Dataset pruning**: a client keeps the ``split.keep_fraction`` of its examples with the
  highest EL2N score (Paul et al. 2021) under the initial model's local path (initial prompt,
  the client's blocks, the head), and samples every batch from them.

What differs from or is left out of the paper:

- The paper's model is U-shaped: the client also holds the *tail* (the classifier) and
  trains it, so labels never leave the device; here the head sits on the server with the
  body, **frozen** (the prompt is the only trained tensor), and each split step's labels
  travel up beside the activations. A trained server-side head would be updated by every
  client's steps in turn (split learning's sequential server), not per client and averaged.
- The local loss uses the server's (frozen) head on the client, shipped with the model,
  instead of a separately trained client tail.
- EL2N is scored once, under the initial model, not re-scored as the prompt trains: that
  keeps each step message self-contained (any process recomputes the same subset).
- The paper's choice of split point by device capacity is not done: ``split.layer`` is fixed.
- The prompt's optimizer is plain SGD, so that a step message carries only the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from .registry import Algorithm, register

__all__ = ["SPLIT_PROMPT", "SplitConfig"]


@dataclass(frozen=True)
class SplitConfig:
    """``[split]``."""

    layer: int = 2  # the client runs blocks 0 .. layer-1; in [1, blocks - 1]
    prompt_length: int = 8  # soft-prompt vectors prepended to the token embeddings, >= 1
    # "vocab" = the embeddings of words of the task (a seeded draw of training-set tokens); "zeros"
    prompt_init: Literal["vocab", "zeros"] = "vocab"
    local_loss_steps: int = 4  # steps each round on the client's local loss before its split steps; 0 = none
    keep_fraction: float = 0.5  # share of each client's examples kept by EL2N pruning, in (0, 1]; 1 = no pruning


def _check(cfg: Any) -> list[str]:
    c, errors = cfg.section("split"), []
    if c.layer < 1:
        errors.append(f"`split.layer` must be in [1, blocks - 1] (the client runs blocks 0 .. layer-1), got {c.layer}")
    if c.prompt_length < 1:
        errors.append(f"`split.prompt_length` must be >= 1 (the soft prompt's vectors), got {c.prompt_length}")
    if c.local_loss_steps < 0:
        errors.append(f"`split.local_loss_steps` must be >= 0, got {c.local_loss_steps}")
    if not (math.isfinite(c.keep_fraction) and 0 < c.keep_fraction <= 1):
        errors.append(f"`split.keep_fraction` must be in (0, 1] (1 = no pruning), got {c.keep_fraction}")
    if cfg.model.task != "seq-cls":
        errors.append(f"split-prompt supports model.task = 'seq-cls' (the server's head scores the classes), "
                      f"got {cfg.model.task!r}")
    if cfg.model.dtype != "float32":
        errors.append(f"split-prompt supports model.dtype = 'float32' (activations and gradients travel as "
                      f"float32), got {cfg.model.dtype!r}")
    if cfg.eval.federated:
        errors.append("`eval.federated` is not supported by split-prompt (a client cannot score the model alone); "
                      "set eval.federated = false")
    return errors


def _check_model(cfg: Any, model: Any) -> list[str]:
    from fedtune.split.model import num_blocks, supported

    c = cfg.section("split")
    if why := supported(model):
        return [why]
    errors, blocks = [], num_blocks(model)
    if not 1 <= c.layer <= blocks - 1:
        errors.append(f"`split.layer` must be in [1, {blocks - 1}] (the model has {blocks} blocks), got {c.layer}")
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and c.prompt_length + cfg.data.max_length > positions:
        errors.append(f"`split.prompt_length` must be in [1, {positions - cfg.data.max_length}] (prompt + "
                      f"data.max_length = {cfg.data.max_length} tokens must fit the model's {positions} positions), "
                      f"got {c.prompt_length}")
    return errors


SPLIT_PROMPT = register(Algorithm(
    name="split-prompt",
    family="split",
    summary="SFPrompt: the client runs the first blocks and tunes a soft prompt, the server the rest; "
            "activations and gradients cross the wire each step, prompts averaged (FedAvg)",
    section=SplitConfig,
    section_name="split",
    check=_check,
    check_model=_check_model,
))
