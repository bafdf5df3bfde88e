"""Federated Offsite-Tuning: clients tune an adapter against a lossy emulator of the model.

Xiao et al., "Offsite-Tuning: Transfer Learning without Full Model", 2023
(https://arxiv.org/abs/2302.04870). The model's first ``offsite.bottom`` and last
``offsite.top`` transformer blocks (and a seq-cls head) form the *adapter*; the blocks
between them are replaced, on every client, by an *emulator* that keeps ``keep_ratio`` of
them (uniform layer-drop: :mod:`fedtune.emulator`). Clients never run the full
model: their forward and backward passes go through ``bottom + kept + top`` blocks. The
server holds the full model, aggregates the adapter and evaluates the adapter *plugged into
the full model* (``eval_*``) beside the emulator's own score (``emulator_eval_*``): the
paper's plug-in vs emulator gap. ``offsite.emulator`` names an emulator the owner distilled
and published beforehand (:func:`fedtune.emulator_build.build_emulator`, ``fedtune emulator``):
every party loads it instead of the bare layer-drop.

Two algorithms share ``[offsite]``:

- ``offsite``: first-order local steps on the adapter (the ``[lora]`` optimizer settings),
  aggregated by FedAvg (FedIT's rule over dense tensors), under SecAgg+ where on; with
  ``offsite.lora`` the adapter blocks carry PEFT LoRA (``[lora]``) and only its factors and the
  head are tuned and travel (the paper's Offsite-Tuning + LoRA), FedIT's rule on them;
- ``offsite-zo``: FedKSeed on the adapter's tensors, each ZO forward through the emulator;
  the uplink stays at (key, scalar) pairs and the server replays them onto the full
  model's adapter, bit for bit the tensors every client holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .registry import Algorithm, register

__all__ = ["OFFSITE", "OFFSITE_ZO", "OffsiteConfig", "plan_for"]


@dataclass(frozen=True)
class OffsiteConfig:
    """``[offsite]``."""

    bottom: int = 1  # the adapter's first blocks (tuned by clients, plugged back into the full model)
    top: int = 1  # the adapter's last blocks (a seq-cls head is always in the adapter)
    keep_ratio: float = 0.5  # share of the middle blocks the emulator keeps (uniform layer-drop), in (0, 1)
    # a directory `fedtune emulator` wrote (a distilled emulator, the same plan); empty: every party
    # layer-drops the checkpoint itself, undistilled
    emulator: str = ""
    # PEFT LoRA (`[lora]`) on the adapter blocks instead of tuning them in full (the paper's
    # Offsite-Tuning + LoRA): the uplink is the LoRA factors and the head, and the optimizer's
    # state shrinks with it; the blocks' own weights stay as the owner sent them (`offsite` only)
    lora: bool = False


def plan_for(cfg: Any, model: Any) -> Any:
    """The emulator plan (:class:`fedtune.emulator.EmulatorPlan`) of ``model``'s block stack
    under the run's ``[offsite]`` (``model``: the full model).

    Raises:
        ValueError: on a model without a stack of identical blocks, or keys it cannot fit.
    """
    from fedtune import emulator as emu

    c = cfg.section("offsite")
    _, stack = emu.block_stack(model)
    return emu.plan_emulator(len(stack), c.bottom, c.top, c.keep_ratio)


def _client_model(cfg: Any, model: Any) -> Any:
    from fedtune import emulator as emu

    emulator = emu.make_emulator(model, plan_for(cfg, model))
    published = cfg.section("offsite").emulator
    if published:  # the owner's published (distilled) emulator replaces the layer-drop's weights
        emu.load_emulator(emulator, published)
    return emulator


def _published(cfg: Any) -> bool:
    """A published emulator holds every tensor a client runs: its checkpoint's weights go unread."""
    return bool(cfg.section("offsite").emulator)


def _tuned(cfg: Any, model: Any) -> list[str]:
    from fedtune import emulator as emu

    plan = emu.emulator_plan(model) or plan_for(cfg, model)  # an emulator keeps the plan it was made by
    return emu.adapter_names(model, plan)


def _check(cfg: Any) -> list[str]:
    c, errors = cfg.section("offsite"), []
    if c.bottom < 0 or c.top < 0 or c.bottom + c.top < 1:
        errors.append(f"`offsite.bottom` and `offsite.top` must be >= 0 with at least one adapter block, "
                      f"got {c.bottom} and {c.top}")
    if not (math.isfinite(c.keep_ratio) and 0 < c.keep_ratio < 1):
        errors.append(f"`offsite.keep_ratio` must be in (0, 1) (the share of middle blocks the emulator keeps), "
                      f"got {c.keep_ratio}")
    if c.emulator and not (Path(c.emulator) / "emulator.json").is_file():
        errors.append(f"`offsite.emulator` = {c.emulator!r} holds no emulator (emulator.json and "
                      "emulator.safetensors, as `fedtune emulator` writes them)")
    if c.lora and cfg.algorithm.name != "offsite":
        errors.append(f"`offsite.lora = true` is for `algorithm.name = \"offsite\"` (first-order clients); "
                      f"{cfg.algorithm.name!r} tunes the adapter blocks' own tensors")
    if cfg.model.trainable:
        errors.append("`model.trainable` is not used with Offsite-Tuning: `[offsite]` bottom/top name the "
                      "adapter blocks the clients tune")
    return errors


OFFSITE = register(Algorithm(
    name="offsite",
    family="lora",
    summary="Offsite-Tuning: first-order adapter blocks tuned against a layer-dropped emulator, FedAvg",
    features=frozenset({"secagg", "compress"}),
    rule="fedit",
    section=OffsiteConfig,
    section_name="offsite",
    check=_check,
    client_model=_client_model,
    client_tensors_given=_published,
    tuned=_tuned,
    adapter_lora=lambda cfg: cfg.section("offsite").lora,
))

OFFSITE_ZO = register(Algorithm(
    name="offsite-zo",
    family="zo",
    summary="Offsite-Tuning with FedKSeed clients: ZO steps on the adapter blocks through the emulator",
    # device: a torch-free ONNX client runs the emulator's loss graph, the adapter's tensors as its inputs
    features=frozenset({"secagg", "resume", "device"}),
    section=OffsiteConfig,
    section_name="offsite",
    check=_check,
    client_model=_client_model,
    client_tensors_given=_published,
    tuned=_tuned,
))
