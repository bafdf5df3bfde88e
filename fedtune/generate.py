"""Text a causal LM generates for held-out prompts, for Rouge-L and exact match.

Prompts are encoded as training encodes them (:func:`fedtune.data.arrays.encode_lm`:
``[bos] + prompt``, cut from the left to ``data.max_length``), left-padded into batches,
and continued by Hugging Face's ``generate``: greedy, or sampled from a generator seeded
by the run's seed, up to ``max_new_tokens`` and stopping at eos. Works with fedtune's
:class:`~fedtune.data.tokenizer.WordTokenizer` and with Hugging Face tokenizers alike
(both have ``decode(ids, skip_special_tokens=True)``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from fedtune.data import Example
from fedtune.data.arrays import pad_id, token_ids
from fedtune.progress import Progress

__all__ = ["GenerationSettings", "generate_texts", "prompt_ids"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate: the ``[eval]`` keys, plus the batch size and the sampling seed."""

    max_new_tokens: int = 32
    batch_size: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    seed: int = 0
    progress_s: float = 10.0  # seconds between progress lines (0 = none)


def prompt_ids(examples: Sequence[Example], tokenizer: Any, max_length: int) -> list[list[int]]:
    """Each example's prompt as the model saw it in training: ``[bos] + prompt``, at most
    ``max_length`` tokens, cut from the left as :func:`~fedtune.data.arrays.encode_lm` cuts."""
    prefix = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    room = max(1, max_length - len(prefix))
    return [prefix + token_ids(tokenizer, ex.prompt)[-room:] for ex in examples]


def _left_pad(rows: Sequence[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], dtype=torch.int64)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.int64)
    return ids, mask


def _until_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


def _new_token_budget(model: Any, prompt_width: int, wanted: int) -> int:
    """``wanted``, cut so that prompt plus continuation fit the model's positions (an OPT's
    learned position table has no row past ``max_position_embeddings``)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0:
        return max(1, min(wanted, limit - prompt_width))
    return wanted


@torch.inference_mode()
def generate_texts(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[list[int]], settings: GenerationSettings,
    device: torch.device,
) -> list[str]:
    """The decoded continuation of every prompt (special tokens dropped, stripped).

    Args:
        model: a causal LM (a ``transformers`` model or a PEFT model around one).
        tokenizer: a ``WordTokenizer`` or a Hugging Face tokenizer.
        prompts: token ids, e.g. from :func:`prompt_ids`.
        settings: length bound, batch size and sampling.
        device: where ``model`` is.
    """
    pad, eos = pad_id(tokenizer), tokenizer.eos_token_id
    progress = Progress("generating", len(prompts), "prompts", settings.progress_s)
    texts: list[str] = []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # seeded sampling that leaves the caller's RNG alone
        torch.manual_seed(settings.seed)
        for start in range(0, len(prompts), settings.batch_size):
            rows = prompts[start : start + settings.batch_size]
            ids, mask = _left_pad(rows, pad)
            sampling: dict[str, Any] = {"do_sample": True, "temperature": settings.temperature, "top_k": 0,
                                        "top_p": 1.0} if settings.do_sample else {"do_sample": False}
            out = cast(Any, model).generate(
                input_ids=ids.to(device), attention_mask=mask.to(device),
                max_new_tokens=_new_token_budget(model, ids.shape[1], settings.max_new_tokens),
                eos_token_id=eos, pad_token_id=pad, **sampling,
            )
            for row in out[:, ids.shape[1] :].tolist():
                texts.append(tokenizer.decode(_until_eos(row, eos), skip_special_tokens=True).strip())
            progress.advance(len(rows))
    return texts
