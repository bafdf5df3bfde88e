"""The registry of named model configs (``"tiny-llama"``, ``"opt-125m"``, ...).

A named config is a function ``fn(vocab_size: int | None) -> PretrainedConfig``. Every
party that builds the same name with the same ``vocab_size`` and seed gets the same
weights (see :func:`fedtune.models.load_model`).

Special token ids: with ``vocab_size=None`` a config keeps its family's ids (those of
the matching Hugging Face tokenizer: Llama bos 1 / eos 2 / no pad, OPT pad 1 / bos 2 /
eos 2, BERT pad 0). With a ``vocab_size`` override, which means a fedtune word
vocabulary, the built-in configs use :class:`fedtune.data.WordTokenizer`'s layout:
pad 0, bos 1, eos 2.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedtune.data.tokenizer import SPECIAL_TOKENS, WordTokenizer

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["ConfigFactory", "build_config", "config_names", "register_config"]

logger = logging.getLogger(__name__)

ConfigFactory = Callable[[int | None], "PretrainedConfig"]

_REGISTRY: dict[str, ConfigFactory] = {}

_WORD_SPECIAL_IDS = {
    "pad_token_id": WordTokenizer.pad_token_id,
    "bos_token_id": WordTokenizer.bos_token_id,
    "eos_token_id": WordTokenizer.eos_token_id,
}


def register_config(name: str) -> Callable[[ConfigFactory], ConfigFactory]:
    """Decorator registering ``fn(vocab_size) -> PretrainedConfig`` under ``name``.

    Args:
        name: a new, non-empty config name.

    Returns:
        The decorator; it returns ``fn`` unchanged.

    Raises:
        ValueError: if ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"config `name` must be a non-empty str, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"a model config named {name!r} is already registered; pick another name")

    def decorator(fn: ConfigFactory) -> ConfigFactory:
        _REGISTRY[name] = fn
        return fn

    return decorator


def config_names() -> list[str]:
    """The registered config names, sorted."""
    return sorted(_REGISTRY)


def build_config(name: str, *, vocab_size: int | None = None) -> PretrainedConfig:
    """Build the Hugging Face config registered as ``name``.

    Args:
        name: a registered name (see :func:`config_names`).
        vocab_size: overrides the config's vocabulary size (e.g. a ``WordTokenizer``'s);
            at least ``len(SPECIAL_TOKENS)`` = 4. ``None`` keeps the family default.

    Returns:
        A fresh config object (safe to modify).

    Raises:
        ValueError: on an unknown name (listing the known ones) or a bad ``vocab_size``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model config {name!r}; known configs: {config_names()}")
    if vocab_size is not None and (
        isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < len(SPECIAL_TOKENS)
    ):
        raise ValueError(
            f"`vocab_size` must be None or an int >= {len(SPECIAL_TOKENS)} (room for the special "
            f"tokens), got {vocab_size!r}"
        )
    return _REGISTRY[name](vocab_size)


def _vocab(vocab_size: int | None, default: int, default_ids: dict[str, int | None]) -> dict[str, Any]:
    """``vocab_size`` and the special ids for a config (see the module docstring)."""
    if vocab_size is None:
        return {"vocab_size": default, **default_ids}
    return {"vocab_size": vocab_size, **_WORD_SPECIAL_IDS}


_LLAMA_IDS: dict[str, int | None] = {"pad_token_id": None, "bos_token_id": 1, "eos_token_id": 2}
_OPT_IDS: dict[str, int | None] = {"pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2}
_BERT_IDS: dict[str, int | None] = {"pad_token_id": 0, "bos_token_id": None, "eos_token_id": None}


@register_config("tiny-llama")
def _tiny_llama(vocab_size: int | None) -> PretrainedConfig:
    """The default simulation model: ~3.2M parameters at the instruction task's vocabulary."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=688,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        **_vocab(vocab_size, 32000, _LLAMA_IDS),
    )


@register_config("tinyllama-1.1b")
def _tinyllama_1b(vocab_size: int | None) -> PretrainedConfig:
    """TinyLlama-1.1B's shape (1,100,048,384 parameters at vocab 32000), for bench/big_model.py."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=2048,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        intermediate_size=5632,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        **_vocab(vocab_size, 32000, _LLAMA_IDS),
    )


@register_config("llama2-7b")
def _llama2_7b(vocab_size: int | None) -> PretrainedConfig:
    """LLaMA-2-7B's shape (6,738,415,616 parameters at vocab 32000), for bench/big_model.py --size 7b."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        **_vocab(vocab_size, 32000, _LLAMA_IDS),
    )


@register_config("micro-llama")
def _micro_llama(vocab_size: int | None) -> PretrainedConfig:
    """A Llama small enough for unit tests."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=172,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        **_vocab(vocab_size, 32000, _LLAMA_IDS),
    )


@register_config("opt-125m")
def _opt_125m(vocab_size: int | None) -> PretrainedConfig:
    """The shape of facebook/opt-125m (125,239,296 parameters at vocab 50272), for benchmarks."""
    from transformers import OPTConfig

    return OPTConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        ffn_dim=3072,
        max_position_embeddings=2048,
        word_embed_proj_dim=768,
        do_layer_norm_before=True,
        tie_word_embeddings=True,
        **_vocab(vocab_size, 50272, _OPT_IDS),
    )


@register_config("micro-opt")
def _micro_opt(vocab_size: int | None) -> PretrainedConfig:
    """An OPT small enough for unit tests."""
    from transformers import OPTConfig

    return OPTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=128,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
        tie_word_embeddings=True,
        **_vocab(vocab_size, 50272, _OPT_IDS),
    )


@register_config("micro-bert")
def _micro_bert(vocab_size: int | None) -> PretrainedConfig:
    """A BERT encoder small enough for sequence-classification tests."""
    from transformers import BertConfig

    return BertConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        **_vocab(vocab_size, 30522, _BERT_IDS),
    )


@register_config("micro-bert-6")
def _micro_bert_6(vocab_size: int | None) -> PretrainedConfig:
    """micro-bert with 6 blocks: enough of a stack to drop some (Offsite-Tuning's emulator tests)."""
    config = _micro_bert(vocab_size)
    config.num_hidden_layers = 6
    return config


@register_config("micro-llama-6")
def _micro_llama_6(vocab_size: int | None) -> PretrainedConfig:
    """micro-llama with 6 blocks: enough of a stack to drop some (Offsite-Tuning's emulator tests)."""
    config = _micro_llama(vocab_size)
    config.num_hidden_layers = 6
    return config
