"""fedtune's word tokenizer as a Hugging Face fast tokenizer, for a run's saved ``model/``.

A run trained on a generated task saves its :class:`~fedtune.data.tokenizer.WordTokenizer`
as a ``tokenizers`` ``tokenizer.json`` (a word-level model over whitespace-split words,
the same ids) with a ``tokenizer_config.json``, so ``AutoTokenizer.from_pretrained`` loads
it with nothing of fedtune installed. Encoding adds the special tokens fedtune's encoders
add: ``<bos>`` before a causal LM's text, ``<bos> ... <eos>`` around a classifier's
(:mod:`fedtune.data.batches`); ``add_special_tokens=False`` gives
``WordTokenizer.encode``'s ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedtune.data.tokenizer import SPECIAL_TOKENS, WordTokenizer

__all__ = ["save_word_tokenizer", "to_fast_tokenizer"]


def to_fast_tokenizer(tokenizer: WordTokenizer, task: str) -> Any:
    """A ``transformers`` fast tokenizer with ``tokenizer``'s vocabulary and ids.

    Args:
        tokenizer: the word tokenizer.
        task: ``"causal-lm"`` (adds ``<bos>``, pads on the left as generation wants) or
            ``"seq-cls"`` (adds ``<bos>`` and ``<eos>``, pads on the right).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos, unk = SPECIAL_TOKENS
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokenizer.vocab)}, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = f"{bos} $A {eos}" if task == "seq-cls" else f"{bos} $A"
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk,
        padding_side="right" if task == "seq-cls" else "left",
    )


def save_word_tokenizer(tokenizer: WordTokenizer, directory: str | Path, task: str) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory``."""
    to_fast_tokenizer(tokenizer, task).save_pretrained(str(directory))
