"""Encode examples into padded tensors and draw seeded batches (torch).

The only module of :mod:`fedtune.data` that imports torch; everything else stays
torch-free for on-device clients.

Both encoders accept a :class:`~fedtune.data.tokenizer.WordTokenizer` or a Hugging Face
tokenizer (anything with ``encode(text, add_special_tokens=...)`` and ``pad_token_id`` /
``bos_token_id`` / ``eos_token_id``). Tensors are right-padded, ``int64``, shape
``(N, T)`` with ``T`` the longest encoded example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from fedtune import rng

from . import arrays
from .tasks import Example

__all__ = ["IGNORE_INDEX", "encode_classification", "encode_lm", "iterate_batches", "sample_batch"]

IGNORE_INDEX = arrays.IGNORE_INDEX
"""Label value the loss skips (PyTorch's ``CrossEntropyLoss`` and Hugging Face default)."""


def encode_lm(examples: Sequence[Example], tokenizer: Any, *, max_length: int) -> dict[str, torch.Tensor]:
    """:func:`fedtune.data.arrays.encode_lm` as int64 tensors (see there)."""
    return {key: torch.from_numpy(value) for key, value in arrays.encode_lm(examples, tokenizer, max_length=max_length).items()}


def encode_classification(
    examples: Sequence[Example], tokenizer: Any, *, max_length: int
) -> dict[str, torch.Tensor]:
    """:func:`fedtune.data.arrays.encode_classification` as int64 tensors (see there)."""
    encoded = arrays.encode_classification(examples, tokenizer, max_length=max_length)
    return {key: torch.from_numpy(value) for key, value in encoded.items()}


def _num_rows(encoded: dict[str, torch.Tensor]) -> int:
    if not encoded:
        raise ValueError("`encoded` must hold at least one tensor, got an empty dict")
    sizes = {key: int(value.shape[0]) for key, value in encoded.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every tensor in `encoded` must have the same first dimension, got {sizes}")
    num_rows = next(iter(sizes.values()))
    if num_rows == 0:
        raise ValueError("`encoded` holds no rows")
    return num_rows


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")


def _permutation(num_rows: int, seed: int, *labels: str | int) -> torch.Tensor:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(rng.derive_seed(seed, *labels))
    return torch.randperm(num_rows, generator=generator)


def iterate_batches(
    encoded: dict[str, torch.Tensor],
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    drop_last: bool = False,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield one epoch of shuffled batches.

    The order is ``torch.randperm`` under a CPU generator seeded with
    ``fedtune.rng.derive_seed(seed, "batches", epoch)``: the same for the same
    ``(seed, epoch)`` in every process, different across epochs.

    Args:
        encoded: tensors sharing their first dimension ``N`` (e.g. from :func:`encode_lm`).
        batch_size: rows per batch, >= 1.
        seed: the data-order seed.
        epoch: the epoch number, selecting the permutation.
        drop_last: skip the final batch if it has fewer than ``batch_size`` rows.

    Yields:
        Dicts with ``encoded``'s keys, each tensor of shape ``(B, ...)`` with ``B <=
        batch_size``; without ``drop_last`` every row appears exactly once per epoch.

    Raises:
        ValueError: on an empty or ragged ``encoded`` or a bad ``batch_size``.
    """
    num_rows = _num_rows(encoded)
    _check_batch_size(batch_size)
    order = _permutation(num_rows, seed, "batches", epoch)
    for start in range(0, num_rows, batch_size):
        rows = order[start : start + batch_size]
        if drop_last and len(rows) < batch_size:
            return
        yield {key: value[rows] for key, value in encoded.items()}


def sample_batch(
    encoded: dict[str, torch.Tensor], batch_size: int, *, seed: int, step: int
) -> dict[str, torch.Tensor]:
    """Draw the batch of local step ``step``: distinct rows, a pure function of ``(seed, step)``.

    For zeroth-order local steps, where a client takes a fixed number of steps rather
    than epochs. The rows are :func:`fedtune.data.arrays.sample_rows`'s, so a torch-free
    device draws the same ones.

    Args:
        encoded: tensors sharing their first dimension ``N``.
        batch_size: rows wanted, >= 1; a client with ``N < batch_size`` gets all ``N`` rows
            (shuffled).
        seed: the data-order seed.
        step: the local step number.

    Returns:
        A dict with ``encoded``'s keys, each tensor of shape ``(min(batch_size, N), ...)``.

    Raises:
        ValueError: on an empty or ragged ``encoded`` or a bad ``batch_size``.
    """
    num_rows = _num_rows(encoded)
    _check_batch_size(batch_size)
    rows = torch.from_numpy(arrays.sample_rows(num_rows, batch_size, seed=seed, step=step))
    return {key: value[rows] for key, value in encoded.items()}
