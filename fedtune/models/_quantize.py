"""A 4- or 8-bit base for LoRA (QLoRA): the frozen linear layers quantised by bitsandbytes.

QLoRA (Dettmers et al. 2023) keeps the frozen base in NF4 (4-bit NormalFloat, 0.5 byte a
weight) or int8 (LLM.int8(), 1 byte) and trains float32 LoRA adapters on top, the biggest
saving a client's memory gets. fedtune does not quantise anything itself: every linear layer
of the base (but the head) is replaced by bitsandbytes' own ``Linear4bit`` /
``Linear8bitLt`` holding its weight as ``Params4bit`` / ``Int8Params``, which bitsandbytes
quantises when the layer is placed on its device; PEFT then wraps those layers with its
bitsandbytes LoRA layers, exactly as for a model loaded with
``from_pretrained(quantization_config=BitsAndBytesConfig(...))``. Doing it on the built
model (rather than at load) serves models built from a named config as well as checkpoints,
one layer at a time (each float weight is freed once its quantised copy exists).

Quantisation is deterministic: every party quantising the same base weights holds the same
bits, so the server's evaluation and every client see one base.

bitsandbytes (>= 0.48) runs on CPU and CUDA; it is an optional dependency (the ``qlora``
extra). Where it is missing, :func:`quantize_base` raises ``ImportError`` naming the fix.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

__all__ = ["QUANTIZE", "Quantize", "bitsandbytes_missing", "quantize_base"]

logger = logging.getLogger(__name__)

Quantize = Literal["none", "nf4", "int8"]
QUANTIZE: tuple[str, ...] = ("none", "nf4", "int8")
# the heads stay in model.dtype: they are trained (seq-cls) or tied to the embeddings (lm_head)
_KEEP = ("classifier", "score", "lm_head", "head")


def bitsandbytes_missing() -> str:
    """Why bitsandbytes cannot quantise here ("" when it can)."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 (an ImportError, or a native library that fails to load)
        return (f"bitsandbytes is not importable ({type(exc).__name__}: {exc}); "
                "install it with `pip install 'fedtune[qlora]'` or set model.quantize = 'none'")
    return ""


def _kept(name: str) -> bool:
    return any(part in _KEEP for part in name.split("."))


def quantize_base(model: torch.nn.Module, method: Quantize, compute_dtype: torch.dtype) -> torch.nn.Module:
    """Replace, in place, every ``nn.Linear`` of ``model`` outside its head by bitsandbytes'
    quantised layer, on CPU; return ``model``.

    Args:
        model: a model on CPU, before any adapter is injected.
        method: ``"nf4"`` (4-bit NormalFloat, double quantisation off) or ``"int8"``
            (LLM.int8() with its default outlier threshold 6.0); ``"none"`` returns ``model``.
        compute_dtype: the dtype the 4-bit layers compute in (the run's ``model.dtype``).

    Raises:
        ImportError: bitsandbytes is missing or broken (:func:`bitsandbytes_missing`).
        ValueError: an unknown method, or no linear layer to quantise.
    """
    if method == "none":
        return model
    if method not in QUANTIZE:
        raise ValueError(f"`model.quantize` must be one of {QUANTIZE}, got {method!r}")
    why = bitsandbytes_missing()
    if why:
        raise ImportError(why)
    import bitsandbytes as bnb

    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and not _kept(name)]
    if not targets:
        raise ValueError(f"model.quantize = {method!r}: the model has no linear layer outside its head to quantise")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        bias = linear.bias is not None
        weight = linear.weight.detach()
        layer: torch.nn.Module
        if method == "nf4":
            layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=compute_dtype,
                                      quant_type="nf4", device="meta")
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False,
                                        threshold=6.0, device="meta")
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        if bias:
            layer.bias = torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        setattr(parent, child, layer.to("cpu"))  # bitsandbytes quantises on placement
    logger.info("quantised %d linear layers to %s with bitsandbytes", len(targets), method)
    return model
