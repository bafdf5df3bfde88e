"""LoRA adapters through Hugging Face PEFT: inject, name, read, write and save them.

fedtune injects LoRA with PEFT (Hu et al., 2021, https://arxiv.org/abs/2106.09685) rather
than its own layers, so an adapter trained in a federation is a plain PEFT adapter:
``save_adapter`` writes ``adapter_config.json`` + ``adapter_model.safetensors`` and
``peft.PeftModel.from_pretrained(base, directory)`` loads it.

Tensors are named as in that file (PEFT's ``get_peft_model_state_dict``), e.g.
``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`` (shape
``(r, in_features)``), ``...query.lora_B.weight`` (``(out_features, r)``) and, for a
sequence-classification model, the head PEFT trains in full
(``base_model.model.classifier.weight``). The same names key the tensors on the wire.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch

from fedtune.config import LoraConfig
from fedtune.rng.torch_backend import seeded_init

__all__ = ["adapter_parameters", "inject_lora", "read_state", "save_adapter", "write_state"]

log = logging.getLogger(__name__)

_TASK_TYPES = {"seq-cls": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


def inject_lora(
    model: torch.nn.Module, lora: LoraConfig, task: str, seed: int, *,
    layers: Sequence[int] | None = None, layers_pattern: str | None = None,
) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT LoRA model; every party gets bit-identical initial adapters.

    ``lora_A`` is drawn by PEFT's Kaiming-uniform init under torch's RNG seeded from
    ``(seed, "lora-init")``; ``lora_B`` starts at zero. For ``seq-cls`` PEFT also trains
    the classification head (``classifier`` / ``score``) in full.

    Args:
        model: a model from :func:`fedtune.models.load_model`.
        lora: rank, alpha, dropout and target modules (empty: PEFT's default for the
            architecture, e.g. ``query``/``value`` for BERT, ``q_proj``/``v_proj`` for Llama).
        task: ``"seq-cls"`` or ``"causal-lm"``.
        seed: the run's seed.
        layers: only the target modules of these blocks (PEFT's ``layers_to_transform``)
            of the block list named ``layers_pattern`` (``"layer"`` for BERT, ``"layers"`` for
            Llama); None: every block.

    Returns:
        The ``peft.PeftModel``, on ``model``'s device.

    Raises:
        ValueError: on an unknown ``task`` or target modules that match no module.
    """
    import peft

    if task not in _TASK_TYPES:
        raise ValueError(f"`task` must be one of {sorted(_TASK_TYPES)}, got {task!r}")
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # annotated int; PEFT scales by alpha / r in float
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) or None,
        task_type=_TASK_TYPES[task],
        layers_to_transform=list(layers) if layers is not None else None,
        layers_pattern=layers_pattern if layers is not None else None,
    )
    try:
        # New adapter tensors are created and initialised on CPU, then moved next to their base layer.
        with seeded_init(seed, "lora-init"), warnings.catch_warnings():
            # PEFT calls a transformers API that transformers 5 deprecates: noise for our users.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = peft.get_peft_model(model, config)
    except ValueError as exc:
        linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)][:6]
        raise ValueError(
            f"`lora.target_modules` = {list(lora.target_modules)}: {exc}; linear modules look like {linear}"
        ) from None
    trained = adapter_parameters(peft_model)
    # PEFT's habit (and QLoRA's): the trained tensors stay float32 over a bfloat16/float16
    # base (PEFT upcasts lora_A/B itself, not a seq-cls head it copies), so the optimizer's
    # state and every party's adapter arithmetic are float32. A no-op on a float32 model.
    with torch.no_grad():
        for param in trained.values():
            param.data = param.data.float()
    num = sum(p.numel() for p in trained.values())
    targets = sorted(getattr(peft_model.peft_config["default"], "target_modules", None) or [])
    log.info("LoRA r=%d alpha=%g on %s: %d adapter parameters", lora.rank, lora.alpha, targets, num)
    return peft_model


def adapter_parameters(peft_model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters under their PEFT file names (see the module docstring).

    Args:
        peft_model: a model from :func:`inject_lora`.

    Returns:
        ``{name: parameter}`` in PEFT's order: the live parameters, so writing to them
        changes the model.

    Raises:
        ValueError: if a tensor of PEFT's state dict is not a parameter of the model.
    """
    from peft import get_peft_model_state_dict

    by_pointer = {p.data_ptr(): p for p in peft_model.parameters()}
    named = {}
    for name, tensor in get_peft_model_state_dict(peft_model).items():
        param = by_pointer.get(tensor.data_ptr())
        if param is None:
            raise ValueError(f"PEFT's adapter tensor {name!r} is not a parameter of the model")
        named[name] = param
    return named


def read_state(params: Mapping[str, torch.Tensor], names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Float32 CPU copies of ``params`` (all, or those in ``names``), for the wire."""
    chosen = params if names is None else {n: params[n] for n in names}
    return {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in chosen.items()}


def write_state(params: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the matching parameters (shapes must already be checked).

    Raises:
        KeyError: naming a tensor of ``state`` the adapter does not have.
    """
    with torch.no_grad():
        for name, value in state.items():
            if name not in params:
                raise KeyError(f"the adapter has no tensor {name!r}")
            params[name].copy_(value)


def save_adapter(peft_model: torch.nn.Module, directory: str | os.PathLike[str]) -> None:
    """Write the adapter in the PEFT format: adapter_config.json + adapter_model.safetensors."""
    cast(Any, peft_model).save_pretrained(str(directory), safe_serialization=True)
