"""Encode examples into padded numpy arrays and draw seeded batches, without torch.

The one implementation of fedtune's causal-LM and classification encodings and of the
per-step batch draw: :mod:`fedtune.data.batches` wraps these arrays as tensors for torch
clients, and on-device clients (ONNX Runtime + numpy) use them as they are, so both train
on the same rows for the same partition, round and step.

A tokenizer is a :class:`~fedtune.data.tokenizer.WordTokenizer` or a Hugging Face tokenizer
(anything with ``encode(text, add_special_tokens=...)`` and ``pad_token_id`` /
``bos_token_id`` / ``eos_token_id``); this module imports neither transformers nor torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedtune import rng

from .tasks import Example
from .tokenizer import WordTokenizer

__all__ = ["IGNORE_INDEX", "encode_classification", "encode_lm", "lm_skip_reason", "pad_id", "sample_batch", "sample_rows", "token_ids"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value the loss skips (as in :data:`fedtune.data.batches.IGNORE_INDEX`)."""


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without the tokenizer's own special tokens."""
    if isinstance(tokenizer, WordTokenizer):
        return tokenizer.encode(text)
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def pad_id(tokenizer: Any) -> int:
    """The padding id: ``pad_token_id``, else ``eos_token_id`` (as for Llama/GPT-2)."""
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither `pad_token_id` nor `eos_token_id`; set one to pad")
    return int(pad)


def _check_inputs(examples: Sequence[Example], max_length: int, minimum: int) -> None:
    if len(examples) == 0:
        raise ValueError("`examples` must hold at least one example, got none")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < minimum:
        raise ValueError(f"`max_length` must be an int >= {minimum}, got {max_length!r}")


def _pad(rows: list[list[int]], value: int) -> np.ndarray:
    width = max(len(row) for row in rows)
    return np.array([row + [value] * (width - len(row)) for row in rows], dtype=np.int64)


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


def _lm_parts(example: Example, tokenizer: Any, eos: int) -> tuple[list[int], list[int]]:
    """(prompt tokens, response tokens + eos) of ``example``, split as :func:`encode_lm` says."""
    prompt_ids = token_ids(tokenizer, example.prompt)
    full_ids = token_ids(tokenizer, example.text)
    boundary = _common_prefix_length(prompt_ids, full_ids)
    return full_ids[:boundary], full_ids[boundary:] + [eos]


def lm_skip_reason(example: Example, tokenizer: Any, *, max_length: int) -> str | None:
    """Why :func:`encode_lm` cannot train on ``example``, or None when it can.

    ``"empty response"``: nothing to learn; ``"no room for the prompt"``: bos, the response
    and eos fill ``max_length`` with no prompt token left (or overflow it, which
    :func:`encode_lm` refuses). Loaders of user data drop such rows before encoding.
    """
    if not example.response.strip():
        return "empty response"
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("`tokenizer` has no `eos_token_id`; causal-LM targets end with eos")
    prefix = 0 if tokenizer.bos_token_id is None else 1
    _, response_part = _lm_parts(example, tokenizer, int(eos))
    if prefix + 1 + len(response_part) > max_length:
        return "no room for the prompt"
    return None


def encode_lm(examples: Sequence[Example], tokenizer: Any, *, max_length: int) -> dict[str, np.ndarray]:
    """Encode examples for causal-LM instruction tuning with the loss on the response only.

    Each row is ``[bos] + prompt + response + [eos]`` (``bos`` only if the tokenizer has
    one). As in Stanford Alpaca, the text ``prompt + sep + response`` is tokenized whole
    and the response is what lies past the prompt's tokens; here "past" means past the
    longest common prefix with the tokens of ``prompt`` alone, so a tokenizer that merges
    across the boundary still supervises every response token. A row longer than
    ``max_length`` loses tokens from the left of the prompt; the response is never cut.

    Args:
        examples: at least one example.
        tokenizer: a ``WordTokenizer`` or a Hugging Face tokenizer.
        max_length: the longest row allowed, in tokens, >= 2.

    Returns:
        ``input_ids``, ``attention_mask`` and ``labels``: ``int64``, shape ``(N, T)``,
        C-contiguous, ``T <= max_length`` the longest row. ``labels`` is ``IGNORE_INDEX``
        (-100) on bos, prompt and padding and equals ``input_ids`` on response and eos;
        padding uses :func:`pad_id` with mask 0.

    Raises:
        ValueError: on no examples, a bad ``max_length``, a tokenizer without eos, or an
            example whose response (plus bos and eos) does not fit in ``max_length``.
    """
    _check_inputs(examples, max_length, 2)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("`tokenizer` has no `eos_token_id`; causal-LM targets end with eos")
    eos = int(eos)
    prefix = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    input_rows, label_rows = [], []
    num_truncated = 0
    for index, example in enumerate(examples):
        prompt_part, response_part = _lm_parts(example, tokenizer, eos)
        room = max_length - len(prefix) - len(response_part)
        if room < 0:
            raise ValueError(
                f"example {index}: the response and eos take {len(response_part)} tokens, which "
                f"with bos exceeds `max_length`={max_length}; raise `max_length`"
            )
        if len(prompt_part) > room:
            num_truncated += 1
            prompt_part = prompt_part[len(prompt_part) - room :]
        input_rows.append(prefix + prompt_part + response_part)
        label_rows.append([IGNORE_INDEX] * (len(prefix) + len(prompt_part)) + response_part)
    if num_truncated:
        logger.warning("cut the prompt of %d of %d examples from the left to fit max_length=%d",
                       num_truncated, len(examples), max_length)
    return {
        "input_ids": _pad(input_rows, pad_id(tokenizer)),
        "attention_mask": _pad([[1] * len(row) for row in input_rows], 0),
        "labels": _pad(label_rows, IGNORE_INDEX),
    }


def encode_classification(examples: Sequence[Example], tokenizer: Any, *, max_length: int) -> dict[str, np.ndarray]:
    """Encode examples for a sequence-classification model; the target is ``example.label``.

    The text is ``example.text``: ``prompt``, plus ``sep + response`` when the response is
    not empty. A Hugging Face tokenizer adds its own special tokens (``[CLS] ... [SEP]``
    for BERT) and truncates on the right; a ``WordTokenizer`` row is
    ``[bos] + words + [eos]``, cut on the right of the words, so that both BERT-style
    (first token) and decoder-style (last non-pad token) pooling see a fixed marker.

    Args:
        examples: at least one example.
        tokenizer: a ``WordTokenizer`` or a Hugging Face tokenizer (anything with
            ``encode(text, add_special_tokens=..., truncation=..., max_length=...)``).
        max_length: the longest row allowed, in tokens, >= 3.

    Returns:
        ``input_ids`` and ``attention_mask``, int64, shape ``(N, T)``, right-padded with
        :func:`pad_id` (mask 0), and ``labels``, int64, shape ``(N,)``.

    Raises:
        ValueError: on no examples or a bad ``max_length``.
    """
    _check_inputs(examples, max_length, 3)
    pad = pad_id(tokenizer)
    rows = []
    num_truncated = 0
    for example in examples:
        text = example.text
        if isinstance(tokenizer, WordTokenizer):
            words = tokenizer.encode(text)
            num_truncated += len(words) > max_length - 2
            row = [tokenizer.bos_token_id] + words[: max_length - 2] + [tokenizer.eos_token_id]
        else:
            row = [int(i) for i in tokenizer.encode(text, add_special_tokens=True)]
            if len(row) > max_length:
                # Re-encode rather than slice, so the tokenizer keeps its closing token.
                num_truncated += 1
                row = [int(i) for i in tokenizer.encode(text, add_special_tokens=True, truncation=True,
                                                        max_length=max_length)]
        rows.append(row)
    if num_truncated:
        logger.warning("cut %d of %d examples on the right to fit max_length=%d",
                       num_truncated, len(examples), max_length)
    return {
        "input_ids": _pad(rows, pad),
        "attention_mask": _pad([[1] * len(row) for row in rows], 0),
        "labels": np.array([example.label for example in examples], dtype=np.int64),
    }


def sample_batch(encoded: dict[str, np.ndarray], batch_size: int, *, seed: int, step: int) -> dict[str, np.ndarray]:
    """The batch of local step ``step``: distinct rows, a pure function of ``(seed, step)``.

    Args:
        encoded: arrays sharing their first dimension ``N`` (from :func:`encode_lm`).
        batch_size: rows wanted, >= 1 (``min(batch_size, N)`` are returned).
        seed: the data-order seed.
        step: the local step number.

    Returns:
        A dict with ``encoded``'s keys, each a fresh C-contiguous array of shape
        ``(min(batch_size, N), ...)``.

    Raises:
        ValueError: on an empty or ragged ``encoded`` or a bad ``batch_size``.
    """
    sizes = {key: int(value.shape[0]) for key, value in encoded.items()}
    if not sizes or len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise ValueError(f"`encoded` must hold arrays with one non-zero first dimension, got {sizes}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
    rows = sample_rows(next(iter(sizes.values())), batch_size, seed=seed, step=step)
    return {key: value[rows] for key, value in encoded.items()}


def sample_rows(num_rows: int, batch_size: int, *, seed: int, step: int) -> np.ndarray:
    """The rows of local step ``step``: the first ``min(batch_size, num_rows)`` entries of a
    permutation drawn from :func:`fedtune.rng.generator` ``(seed, "sample-batch", step)``."""
    order = rng.generator(seed, "sample-batch", step).permutation(num_rows)
    return order[:batch_size].astype(np.int64)
