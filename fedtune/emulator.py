"""Offsite-Tuning's split of a model: an adapter (bottom and top blocks) and an emulator.

Xiao et al., "Offsite-Tuning: Transfer Learning without Full Model", 2023
(https://arxiv.org/abs/2302.04870). A transformer is a stack of identical blocks; the model
owner keeps the first ``bottom`` and the last ``top`` blocks whole as the *adapter*, and
replaces the ``M`` blocks between them by an *emulator*: ``n = round(keep_ratio * M)`` (half up) of
them, chosen evenly from the first to the last middle block (uniform layer-drop). The
owner may then **distill** the kept blocks (:func:`distill`: the paper's step, which narrows
the gap between the adapter's score on the emulator and plugged into the full model) and
publish the emulator as files (:func:`save_emulator`; ``offsite.emulator`` points every
party at them, :func:`load_emulator`). The data owner tunes the adapter with the emulator
frozen in between, and the owner plugs the tuned adapter back into the full model.

:func:`make_emulator` drops the blocks in place. The emulator's blocks are renumbered
(a ``ModuleList`` is contiguous), so its parameter names differ from the full model's
above the bottom adapter; every party keys tensors by the **full model's** names
(:func:`global_names`), so a payload, a seed direction or a digest means the same tensor
on the owner's full model and on a client's emulator.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EmulatorPlan",
    "adapter_names",
    "block_index",
    "block_stack",
    "describe",
    "distill",
    "emulator_bytes",
    "emulator_plan",
    "full_name",
    "global_names",
    "load_emulator",
    "make_emulator",
    "plan_emulator",
    "save_emulator",
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


def full_name(model: torch.nn.Module, name: str) -> str:
    """The full model's name of ``name``, a parameter or state-dict name of ``model``: an
    emulator, a PEFT model over one (adapter names included), or a full model (the identity).
    The block index after the block stack's prefix is mapped back through the emulator's plan."""
    plan = emulator_plan(model)
    if plan is None:
        return name
    prefix, _ = block_stack(model)
    index = block_index(prefix, name)
    if index is None:
        return name
    _, dot, rest = name[len(prefix) + 1:].partition(".")
    return f"{prefix}.{plan.kept[index]}{dot}{rest}"


def block_index(prefix: str, name: str) -> int | None:
    """The block a tensor named ``name`` lies in, for a block stack at ``prefix``
    (:func:`block_stack`); None outside the stack."""
    if not name.startswith(prefix + "."):
        return None
    return int(name[len(prefix) + 1:].partition(".")[0])


def emulator_bytes(model: Any, tuned: Mapping[str, torch.Tensor]) -> int:
    """Bytes of the tensors an emulator model holds besides the ``tuned`` ones (the adapter's,
    or its LoRA factors and head): what the owner ships once."""
    trained = {id(t) for t in tuned.values()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in trained)


def summary(emulator: torch.nn.Module, full: torch.nn.Module, tuned: Mapping[str, torch.Tensor]) -> str:
    """One line for a run's start: the plan, the emulator's size against the full model's, and
    what it costs each client once (:func:`emulator_bytes`)."""
    return (f"{describe(emulator_plan(emulator))} ({_base_parameters(emulator)} of the full "
            f"model's {_base_parameters(full)} parameters; "
            f"{emulator_bytes(emulator, tuned) / 1e6:.1f} MB shipped to each client once)")


def _base_parameters(model: torch.nn.Module) -> int:
    """The model's parameters, LoRA factors left out (``offsite.lora``)."""
    return sum(p.numel() for name, p in model.named_parameters() if ".lora_" not in name)


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


# --- distillation, and the emulator as files --------------------------------------------------

EMULATOR_FILE = "emulator.safetensors"  # every tensor of the emulator, by the full model's names
EMULATOR_META = "emulator.json"  # the plan, the digest of the tensors, how they were made


def _block_output(block: torch.nn.Module, into: list[torch.Tensor]) -> Any:
    """A forward hook on ``block`` that appends its hidden-state output to ``into``."""

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        into.append(output[0] if isinstance(output, tuple) else output)

    return block.register_forward_hook(hook)


def distill(
    emulator: torch.nn.Module,
    full: torch.nn.Module,
    batch_for_step: Callable[[int], Mapping[str, torch.Tensor]],
    steps: int,
    *,
    lr: float,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train the emulator's kept middle blocks, in place, to reproduce the full model's middle.

    For each step's batch both models run forward; the loss is the mean squared difference,
    over the batch's non-padding tokens and the hidden size, between the hidden state leaving
    the emulator's last middle block and the one leaving the full model's last middle block
    (both enter from the same, shared bottom adapter blocks). AdamW at ``lr``, no weight decay,
    both models in eval mode (no dropout: the same emulator from the same batches, every time).
    Only the middle blocks move: the adapter, the embeddings and the head keep their weights.

    Args:
        emulator: :func:`make_emulator`'s model; ``full``: the model it was made from.
        batch_for_step: ``input_ids`` and ``attention_mask`` of step ``i`` (the owner's own
            text: never a client's data).
        steps: optimizer steps, >= 1.
        progress: called as ``progress(step, loss)`` after every step.

    Returns:
        Each step's loss.

    Raises:
        ValueError: if ``emulator`` is not an emulator of ``full``, or ``steps`` < 1.
    """
    plan = emulator_plan(emulator)
    if plan is None or emulator_plan(full) is not None:
        raise ValueError("distill() takes an emulator (make_emulator) and the full model it was made from")
    if steps < 1:
        raise ValueError(f"distillation steps must be >= 1, got {steps}")
    _, full_stack = block_stack(full)
    _, emu_stack = block_stack(emulator)
    if len(full_stack) != plan.num_blocks:
        raise ValueError(f"the emulator's plan is for {plan.num_blocks} blocks; the full model has {len(full_stack)}")
    first_middle = len(plan.bottom)
    middle = [emu_stack[i] for i in range(first_middle, first_middle + len(plan.middle))]
    params = [p for block in middle for p in block.parameters()]
    frozen = {p: p.requires_grad for p in emulator.parameters()}
    for p in emulator.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    teacher: list[torch.Tensor] = []
    student: list[torch.Tensor] = []
    hooks = [_block_output(full_stack[plan.num_blocks - len(plan.top) - 1], teacher), _block_output(middle[-1], student)]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses: list[float] = []
    try:
        for step in range(steps):
            batch = batch_for_step(step)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            teacher.clear()
            student.clear()
            with torch.no_grad():
                full(input_ids=ids, attention_mask=mask)
            emulator(input_ids=ids, attention_mask=mask)
            weight = mask.unsqueeze(-1).to(student[0].dtype)
            loss = ((student[0] - teacher[0].detach()) ** 2 * weight).sum() / (weight.sum() * student[0].shape[-1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(step, losses[-1])
    finally:
        for hook in hooks:
            hook.remove()
        for p, requires in frozen.items():
            p.requires_grad_(requires)
    return losses


def _digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_emulator(emulator: torch.nn.Module, directory: str | Path, **record: Any) -> Path:
    """Write ``emulator`` (every tensor, by the full model's names) and its plan to ``directory``:
    what the model owner publishes, and what ``offsite.emulator`` names. ``record``: how it was
    made (distillation steps, loss, data), kept in the metadata file.

    Raises:
        ValueError: if ``emulator`` is not an emulator.
    """
    from safetensors.torch import save_file

    plan = emulator_plan(emulator)
    if plan is None:
        raise ValueError("save_emulator() takes an emulator (make_emulator)")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    names = global_names(emulator)
    tensors = {names[n]: p.detach().cpu().contiguous() for n, p in emulator.named_parameters()}
    save_file(tensors, str(out / EMULATOR_FILE))
    meta = {"plan": asdict(plan), "sha256": _digest(tensors), **record}
    (out / EMULATOR_META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_emulator(emulator: torch.nn.Module, directory: str | Path, key: str = "offsite.emulator") -> None:
    """Overwrite, in place, every tensor of ``emulator`` with the one :func:`save_emulator` wrote.

    Raises:
        ValueError: naming ``key`` when the directory lacks the files, their digest does not
            match (a corrupted copy), or they were made by another plan or for another model
            (a name or a shape differs).
    """
    from safetensors.torch import load_file

    plan = emulator_plan(emulator)
    if plan is None:
        raise ValueError("load_emulator() takes an emulator (make_emulator)")
    where = Path(directory)
    if not (where / EMULATOR_FILE).is_file() or not (where / EMULATOR_META).is_file():
        raise ValueError(f"`{key}` = {str(directory)!r} holds no emulator ({EMULATOR_FILE} and {EMULATOR_META}, "
                         "as `fedtune emulator` writes them)")
    try:
        meta = json.loads((where / EMULATOR_META).read_text())
        plan_of = meta["plan"]
        saved = EmulatorPlan(int(plan_of["num_blocks"]), tuple(plan_of["bottom"]), tuple(plan_of["middle"]),
                             tuple(plan_of["top"]))
        digest = str(meta["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"`{key}` = {str(directory)!r}: {EMULATOR_META} is not what `fedtune emulator` "
                         f"writes ({type(exc).__name__}: {exc})") from None
    if saved != plan:
        raise ValueError(f"`{key}` = {str(directory)!r} was made for {describe(saved)} of a {saved.num_blocks}-block "
                         f"model; this run's [offsite] asks for {describe(plan)} of {plan.num_blocks}")
    tensors = load_file(str(where / EMULATOR_FILE))
    if _digest(tensors) != digest:
        raise ValueError(f"`{key}` = {str(directory)!r}: {EMULATOR_FILE} does not match the digest in "
                         f"{EMULATOR_META} (a corrupted or altered copy)")
    names = global_names(emulator)
    own = {names[n]: p for n, p in emulator.named_parameters()}
    if own.keys() != tensors.keys():
        missing, extra = sorted(own.keys() - tensors.keys()), sorted(tensors.keys() - own.keys())
        raise ValueError(f"`{key}` = {str(directory)!r} is an emulator of another model: "
                         f"missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, target in own.items():
            if tuple(tensors[name].shape) != tuple(target.shape):
                raise ValueError(f"`{key}` = {str(directory)!r} is an emulator of another model: {name} has shape "
                                 f"{tuple(tensors[name].shape)}, this model's {tuple(target.shape)}")
            target.copy_(tensors[name])
