"""The model owner's step before an Offsite-Tuning federation: build, distill and publish the emulator.

``fedtune emulator`` runs :func:`build_emulator`. Apart from :mod:`fedtune.algorithms.offsite`
because it needs the run's workload (model, tokenizer, data), which the algorithms package
must not import.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch

from fedtune import emulator as emu
from fedtune.algorithms.offsite import plan_for
from fedtune.data.batches import sample_batch
from fedtune.workload import Workload

__all__ = ["DISTILL_DATA_SEED", "build_emulator"]

log = logging.getLogger("fedtune")


DISTILL_DATA_SEED = 1000  # a generated source's distillation text: drawn with a seed no run of the docs uses


def build_emulator(
    cfg: Any, out: str | Path, *, steps: int, lr: float, batch_size: int,
    data: str = "", data_seed: int = DISTILL_DATA_SEED, log_every: int = 0,
) -> dict[str, Any]:
    """The model owner's step before a run: the emulator ``cfg``'s ``[offsite]`` plans, distilled
    for ``steps`` steps (0: layer-drop alone) on the owner's own text, written to ``out``
    (:func:`fedtune.emulator.save_emulator`) for ``offsite.emulator``.

    The text is never a client's: a generated source is drawn again with ``data_seed`` (its
    train and held-out examples); a file source needs ``data``, another file in the run's
    ``[data]`` format. Labels are not used.

    Returns:
        What was done: steps, the first and last loss, the examples' count, the output directory.

    Raises:
        ValueError: on a model without a block stack, keys that do not fit it, ``steps`` < 0,
            ``lr`` or ``batch_size`` out of range, or a file source without ``data``.
    """
    if steps < 0:
        raise ValueError(f"distillation steps must be >= 0, got {steps}")
    if steps and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the distillation learning rate must be > 0, got {lr}")
    if steps and batch_size < 1:
        raise ValueError(f"the distillation batch size must be >= 1, got {batch_size}")
    workload = Workload(cfg)
    full = workload.build_model()
    emulator = emu.make_emulator(copy.deepcopy(full), plan_for(cfg, full))  # one read of the checkpoint
    record: dict[str, Any] = {"model": cfg.model.path or cfg.model.config, "steps": steps}
    if steps:
        if cfg.data.source == "file":
            if not data:
                raise ValueError("a file source's emulator is distilled on the owner's own text: give it as "
                                 "--data, a file in the run's [data] format (never the clients' data.path)")
            text_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=data, eval_path="",
                                                                         eval_split=""))
            record["data"] = data
        else:
            text_cfg = dataclasses.replace(cfg, seed=data_seed)
            record["data"] = f"{cfg.data.source}, seed {data_seed}"
        train, held = Workload(text_cfg).examples
        encoded = workload.encode(train + held)  # the run's tokenizer
        count = int(encoded["input_ids"].shape[0])
        every = log_every or max(1, steps // 10)

        def batch(step: int) -> dict[str, torch.Tensor]:
            return sample_batch(encoded, min(batch_size, count), seed=data_seed, step=step)

        def progress(step: int, loss: float) -> None:
            if (step + 1) % every == 0 or step == 0:
                log.info("distilling the emulator: step %d/%d, loss %.5f", step + 1, steps, loss)

        losses = emu.distill(emulator, full, batch, steps, lr=lr, progress=progress)
        record.update(lr=lr, batch_size=batch_size, examples=count, first_loss=losses[0], last_loss=losses[-1])
    emu.save_emulator(emulator, out, **record)
    return {**record, "out": str(out)}
