"""Offsite-Tuning's split of a model: an adapter (bottom and top blocks) and an emulator.

Xiao et al., "Offsite-Tuning: Transfer Learning without Full Model", 2023
(https://arxiv.org/abs/2302.04870). A transformer is a stack of identical blocks; the model
owner keeps the first ``bottom`` and the last ``top`` blocks whole as the *adapter*, and
replaces the ``M`` blocks between them by an *emulator*: ``n = round(keep_ratio * M)`` (half up) of
them, chosen evenly from the first to the last middle block (uniform layer-drop; the
paper's distillation of the emulator is not done here). The data owner tunes the adapter
with the emulator frozen in between, and the owner plugs the tuned adapter back into the
full model.

:func:`make_emulator` drops the blocks in place. The emulator's blocks are renumbered
(a ``ModuleList`` is contiguous), so its parameter names differ from the full model's
above the bottom adapter; every party keys tensors by the **full model's** names
(:func:`global_names`), so a payload, a seed direction or a digest means the same tensor
on the owner's full model and on a client's emulator.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "EmulatorPlan",
    "adapter_names",
    "block_stack",
    "describe",
    "emulator_bytes",
    "emulator_plan",
    "global_names",
    "make_emulator",
    "plan_emulator",
    "scores_on",
    "summary",
]

_NAMES_ATTR = "_fedtune_global_names"  # on an emulator: its parameter name -> the full model's
_PLAN_ATTR = "_fedtune_emulator_plan"  # on an emulator: the plan it was made by
HEAD_PREFIXES = ("classifier.", "score.")  # a seq-cls head's tensors (label-names head, HF heads)


@dataclass(frozen=True)
class EmulatorPlan:
    """Which blocks of an ``num_blocks``-block stack the adapter and the emulator hold."""

    num_blocks: int
    bottom: tuple[int, ...]  # the adapter's first blocks
    middle: tuple[int, ...]  # the emulator's blocks (kept middle blocks, ascending)
    top: tuple[int, ...]  # the adapter's last blocks

    @property
    def kept(self) -> tuple[int, ...]:
        """The full model's block indices the emulator model holds, in order."""
        return self.bottom + self.middle + self.top

    @property
    def adapter(self) -> tuple[int, ...]:
        return self.bottom + self.top


def block_stack(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The model's stack of transformer blocks: its largest ``ModuleList`` of modules of one class.

    Raises:
        ValueError: if the model has no ``ModuleList`` of at least 2 blocks of one class.
    """
    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ValueError(f"an Offsite-Tuning emulator drops blocks of a stack of identical transformer blocks; "
                         f"{type(model).__name__} has none (no ModuleList of >= 2 modules of one class)")
    return best[1], best[2]


def plan_emulator(num_blocks: int, bottom: int, top: int, keep_ratio: float) -> EmulatorPlan:
    """The adapter's and the emulator's blocks of a ``num_blocks``-block stack.

    Raises:
        ValueError: naming the ``offsite.*`` key and its accepted range when the adapter takes
            every block or the keep ratio leaves no middle block or all of them.
    """
    if bottom < 0 or top < 0 or bottom + top < 1:
        raise ValueError(f"`offsite.bottom` and `offsite.top` must be >= 0 with at least one adapter block, "
                         f"got {bottom} and {top}")
    middle = num_blocks - bottom - top
    if middle < 2:
        raise ValueError(f"`offsite.bottom` + `offsite.top` must leave at least 2 of the model's {num_blocks} "
                         f"blocks to emulate (at most {num_blocks - 2} in the adapter), got {bottom} + {top}")
    kept = math.floor(keep_ratio * middle + 0.5)  # half up (round() would take 0.5 to 0)
    if not 1 <= kept <= middle - 1:
        low, high = 0.5 / middle, (middle - 0.5) / middle
        raise ValueError(f"`offsite.keep_ratio` = {keep_ratio:g} keeps {kept} of the {middle} middle blocks; the "
                         f"emulator must keep at least one and drop at least one: use a value in "
                         f"[{low:.3g}, {high:.3g})")
    first = bottom
    stride = (middle - 1) / (kept - 1) if kept > 1 else 0.0
    chosen = sorted({first + round(i * stride) for i in range(kept)}) if kept > 1 else [first + (middle - 1) // 2]
    return EmulatorPlan(num_blocks, tuple(range(bottom)), tuple(chosen), tuple(range(num_blocks - top, num_blocks)))


def _set_config_layers(model: torch.nn.Module, kept: tuple[int, ...]) -> None:
    """Every Hugging Face config in ``model`` says it has ``len(kept)`` layers (per-layer lists cut)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "num_hidden_layers"):
            continue
        if config.num_hidden_layers != len(kept):
            layer_types = getattr(config, "layer_types", None)
            if isinstance(layer_types, list) and len(layer_types) == config.num_hidden_layers:
                config.layer_types = [layer_types[i] for i in kept]
            config.num_hidden_layers = len(kept)


def make_emulator(model: torch.nn.Module, plan: EmulatorPlan) -> torch.nn.Module:
    """Drop, in place, the blocks of ``model`` that ``plan`` leaves out; returns ``model``.

    The kept blocks are renumbered ``0..len(kept)-1``; an attention module's ``layer_idx``
    (a KV cache's slot) follows. :func:`global_names` maps the new parameter names back.

    Raises:
        ValueError: if the model's block stack does not have ``plan.num_blocks`` blocks.
    """
    prefix, stack = block_stack(model)
    if len(stack) != plan.num_blocks:
        raise ValueError(f"the emulator plan is for {plan.num_blocks} blocks; {prefix} has {len(stack)}")
    before = {id(p): name for name, p in model.named_parameters()}
    blocks = [stack[i] for i in plan.kept]
    for new, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                setattr(module, "layer_idx", new)  # noqa: B010 (an nn.Module attribute, typed as a submodule)
    parent_name, _, attr = prefix.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, torch.nn.ModuleList(blocks))
    _set_config_layers(model, plan.kept)
    names = {name: before[id(p)] for name, p in model.named_parameters()}
    setattr(model, _NAMES_ATTR, names)
    setattr(model, _PLAN_ATTR, plan)
    return model


def emulator_plan(model: torch.nn.Module) -> EmulatorPlan | None:
    """The plan ``model`` was made an emulator by (:func:`make_emulator`); None for a full model."""
    plan: EmulatorPlan | None = getattr(model, _PLAN_ATTR, None)
    return plan


def global_names(model: torch.nn.Module) -> dict[str, str]:
    """Each parameter name of ``model`` -> the full model's name of that tensor (the identity
    for a model that is not an emulator)."""
    names: dict[str, str] | None = getattr(model, _NAMES_ATTR, None)
    if names is not None:
        return dict(names)
    return {name: name for name, _ in model.named_parameters()}


def adapter_names(model: torch.nn.Module, plan: EmulatorPlan) -> list[str]:
    """The full model's names of the adapter's tensors: every parameter of the plan's bottom
    and top blocks, and a seq-cls head's (``classifier.*`` / ``score.*``), in ``named_parameters()``
    order. ``model``: the full model or its emulator."""
    prefix, _ = block_stack(model)
    wanted = tuple(f"{prefix}.{i}." for i in plan.adapter)
    out = []
    for name in global_names(model).values():
        if name.startswith(wanted) or name.startswith(HEAD_PREFIXES):
            out.append(name)
    return out


def describe(plan: EmulatorPlan | None) -> str:
    """One line: which blocks are adapter and which emulate (None: not an emulator)."""
    if plan is None:
        return "the full model (no blocks dropped)"
    return (f"adapter blocks {list(plan.bottom)} + {list(plan.top)}, emulator keeps middle blocks "
            f"{list(plan.middle)} of {plan.num_blocks - len(plan.adapter)}")


def emulator_bytes(model: Any, adapter: set[str]) -> int:
    """Bytes of the tensors an emulator model holds besides the adapter's: what the owner ships once."""
    names = global_names(model)
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if names[n] not in adapter)


def summary(emulator: torch.nn.Module, full: torch.nn.Module, adapter: set[str]) -> str:
    """One line for a run's start: the plan, the emulator's size against the full model's, and
    what it costs each client once (:func:`emulator_bytes`)."""
    return (f"{describe(emulator_plan(emulator))} ({sum(p.numel() for p in emulator.parameters())} of the full "
            f"model's {sum(p.numel() for p in full.parameters())} parameters; "
            f"{emulator_bytes(emulator, adapter) / 1e6:.1f} MB shipped to each client once)")


@torch.no_grad()
def scores_on(emulator: torch.nn.Module, tuned: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
              evaluate: Any) -> dict[str, float]:
    """``evaluate(emulator)``'s scores as ``emulator_<name>``, with the global ``state`` (the
    full model's names) copied into the emulator's ``tuned`` tensors first.

    Raises:
        RuntimeError: if ``state`` does not name exactly the tuned tensors (a bug, not bad input).
    """
    if tuned.keys() != state.keys():
        raise RuntimeError("the emulator's tuned tensors differ from the full model's")
    for name, target in tuned.items():
        target.copy_(state[name])
    return {f"emulator_{k}": v for k, v in evaluate(emulator).items()}

