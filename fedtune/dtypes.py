"""The model dtypes (``model.dtype``) and their bits across torch and numpy.

fedtune holds, perturbs and replays weights in the model's dtype: float32, bfloat16 or
float16 (docs/architecture.md, "Low precision"). torch has bfloat16 and numpy has not:
``ml_dtypes.bfloat16`` (Google's numpy extension types, https://github.com/jax-ml/ml_dtypes)
is numpy's, and safetensors' numpy API reads and writes it. A torch bfloat16 tensor cannot
``.numpy()``, and Flower's ``ArrayRecord`` serialises through ``np.save``, which knows no
bfloat16; so the bridge below reinterprets the 2-byte elements through ``int16``, never
converting a value: digests, checkpoints, the wire and the numpy replay see exactly the
torch tensors' bits.

torch is imported inside the functions that need it: the config and the torch-free parties
(devices, the capacity estimate) use the tables alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPE_NAMES",
    "autocast",
    "copy_bits_",
    "float32_loss",
    "itemsize",
    "lost_fraction",
    "numpy_dtype",
    "to_numpy",
    "torch_dtype",
    "wire_tensor",
]

DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def _check(name: str) -> str:
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown model dtype {name!r}; known: {', '.join(DTYPE_NAMES)}")
    return name


def itemsize(name: str) -> int:
    """Bytes per element of dtype ``name``."""
    return 4 if _check(name) == "float32" else 2


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of ``name``."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[_check(name)]


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of ``name`` (``ml_dtypes.bfloat16`` for bfloat16)."""
    if _check(name) == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy array of ``tensor``'s bits (on the CPU: a view; detached, made contiguous).

    bfloat16 becomes ``ml_dtypes.bfloat16``; every other dtype is ``Tensor.numpy()``'s.
    """
    import torch

    t = tensor.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
    return t.numpy()


def wire_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as Flower's ``ArrayRecord`` can carry it: bfloat16 as its ``int16`` bits
    (read back by :func:`copy_bits_`), other dtypes as they are."""
    import torch

    t = tensor.detach().cpu().contiguous()
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def copy_bits_(tensor: torch.Tensor, array: np.ndarray) -> None:
    """Overwrite ``tensor`` (in place, shape kept) with ``array``'s values.

    A bfloat16 tensor takes the *bits* of a 2-byte array that is not numpy's float16: an
    ``ml_dtypes.bfloat16`` array, or the ``int16``/``void`` bits :func:`wire_tensor` and
    ``np.save`` leave of one. Any other pair is a value copy (``Tensor.copy_``).

    Raises:
        ValueError: if the element counts differ.
    """
    import torch

    array = np.ascontiguousarray(array)
    if array.size != tensor.numel():
        raise ValueError(f"{array.size} elements sent for a tensor of {tensor.numel()}")
    if tensor.dtype == torch.bfloat16 and array.dtype.itemsize == 2 and array.dtype.kind != "f":
        source = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        source = torch.from_numpy(array)
    with torch.no_grad():
        tensor.copy_(source.view(tensor.shape))


def autocast(device: torch.device, name: str) -> contextlib.AbstractContextManager[Any]:
    """The forward's precision context for a model held in dtype ``name``.

    A float32 model runs as it is (no context). A bfloat16/float16 model runs under
    ``torch.autocast(device.type, dtype)``: its float32 parts (LoRA adapters, a float32
    classification head) then compute in the model's dtype beside the base, and autocast
    keeps its own float32 ops (softmax, norms, losses) in float32.
    """
    import torch

    if _check(name) == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch_dtype(name))


def float32_loss(output: Any, labels: torch.Tensor | None) -> torch.Tensor:
    """The mean cross-entropy of a forward's ``output`` (``.loss``, ``.logits``), in float32.

    A bfloat16 loss has 8 significant bits: a ZO step's ``L+ - L-`` would mostly be zero.
    Hugging Face's causal-LM loss upcasts its logits itself; its sequence-classification
    heads (``labels`` of shape ``(B,)``) do not, so theirs is taken again from float32 logits.
    Any other output (a float32 model's, or one without ``labels``) gives its ``.loss``.
    """
    import torch

    if labels is not None and labels.dim() == 1 and output.logits.dtype != torch.float32:
        return torch.nn.functional.cross_entropy(output.logits.float(), labels)
    return output.loss


def lost_fraction(tensors: Sequence[torch.Tensor], step: float) -> float:
    """The fraction of the elements of ``tensors`` that ``w + step`` leaves unchanged.

    In a 16-bit dtype a perturbation ``eps * z`` rounds away on every weight whose half ulp
    exceeds ``eps`` (bfloat16, eps = 1e-3: ``|w| >= 0.5``, norm gains at 1.0 among
    them): those weights are never perturbed, so never trained. Computed as the update
    computes it (``step`` rounded to each tensor's dtype first), one tensor at a time.
    """
    import torch

    lost = total = 0
    with torch.no_grad():
        for tensor in tensors:
            c = torch.tensor(step, dtype=torch.float32).to(tensor.dtype)
            lost += int(((tensor + c) == tensor).sum())
            total += tensor.numel()
    return lost / total if total else 0.0
