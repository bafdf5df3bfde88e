"""A client's local LoRA training: a plain AdamW or SGD loop over seeded batches.

A float32 model: mixed precision on CUDA (``torch.autocast`` in bf16 where the GPU supports
it, else fp16 with a ``GradScaler``); float32 on CPU, where low-precision matmuls are often
slower. A bfloat16/float16 base (``model.dtype``): autocast in that dtype on any device, the
adapters, their gradients and the optimizer state in float32 (:func:`fedtune.lora.adapters.inject_lora`).
The optimizer is fresh every round, as in FedIT and LoRA-FAIR: its state does not travel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fedtune.dtypes import float32_loss

__all__ = ["TrainResult", "local_train"]


@dataclass(frozen=True)
class TrainResult:
    """What a client's local steps did."""

    mean_loss: float  # over the steps taken; nan if none
    steps: int  # steps taken
    skipped: int  # steps skipped for a non-finite loss


def _autocast_dtype(device: torch.device, base_dtype: torch.dtype) -> torch.dtype | None:
    if base_dtype != torch.float32:
        return base_dtype
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def local_train(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    batch_for_step: Callable[[int], dict[str, torch.Tensor]],
    steps: int,
    *,
    optimizer: str,
    lr: float,
    weight_decay: float,
    device: torch.device,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    base_dtype: torch.dtype = torch.float32,
) -> TrainResult:
    """Take ``steps`` optimizer steps on ``params``; ``model`` is left in eval mode.

    Args:
        model: a Hugging Face model (or PEFT wrapper) whose forward returns ``.loss``
            when given ``labels``.
        params: the tensors to train (``requires_grad`` is set on them and only them).
        batch_for_step: the batch of step ``i`` (tensors of shape ``(B, ...)``, on any device).
        steps: optimizer steps, >= 1.
        optimizer: ``"adamw"`` or ``"sgd"``.
        lr: learning rate, >= 0.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay, >= 0.
        device: where ``model`` lives.
        extra_loss: a term added to every step's loss, from the current ``params`` (an
            algorithm's client hook, e.g. FedProx's proximal term); the reported loss is the
            model's alone.
        base_dtype: the frozen weights' dtype (``model.dtype``): a 16-bit one is the
            autocast dtype.

    Returns:
        The :class:`TrainResult`.

    Raises:
        ValueError: on an unknown optimizer, ``steps`` < 1 or no ``params``.
    """
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"`optimizer` must be 'adamw' or 'sgd', got {optimizer!r}")
    if steps < 1:
        raise ValueError(f"`steps` must be >= 1, got {steps}")
    if not params:
        raise ValueError("`params` is empty: nothing to train")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt: torch.optim.Optimizer = (
        torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        if optimizer == "adamw"
        else torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    )
    amp = _autocast_dtype(device, base_dtype)
    scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16 and device.type == "cuda")
    losses, skipped = [], 0
    model.train()
    try:
        for step in range(steps):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch_for_step(step).items()}
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = float32_loss(model(**batch), batch.get("labels"))
            if not torch.isfinite(loss):
                skipped += 1
                continue
            objective = loss if extra_loss is None else loss + extra_loss()
            scaler.scale(objective).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    finally:
        model.eval()
        for p in params:
            p.requires_grad_(False)
    mean = sum(losses) / len(losses) if losses else math.nan
    return TrainResult(mean_loss=mean, steps=len(losses), skipped=skipped)
