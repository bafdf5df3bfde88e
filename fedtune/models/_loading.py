"""Build or load a model and its tokenizer, deterministically and from local files only.

fedtune's parties must start from bit-identical weights. A model built from a named
config is initialised on CPU under :func:`fedtune.rng.torch_backend.seeded_init`, so its
weights depend only on ``(config, vocab_size, num_labels, seed)``; a model loaded from a
directory reads its weights from disk, and any freshly initialised head (a
classification head on a base checkpoint) is seeded the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import torch

from fedtune.rng.torch_backend import seeded_init

from ._configs import build_config, config_names

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["ModelTask", "load_model", "load_tokenizer"]

logger = logging.getLogger(__name__)

ModelTask = Literal["causal-lm", "seq-cls", "encoder"]  # encoder: the bare AutoModel (hidden states)
_TASKS: tuple[str, ...] = get_args(ModelTask)
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_MODEL_DIR_HELP = "a local Hugging Face model directory (config.json plus *.safetensors or pytorch_model.bin)"


def _check_model_dir(path: str | os.PathLike[str], *, weights: bool = True) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model directory {str(directory)!r} does not exist; expected {_MODEL_DIR_HELP}"
        )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{str(directory)!r} has no config.json; expected {_MODEL_DIR_HELP}")
    if weights and not any(any(directory.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise FileNotFoundError(
            f"{str(directory)!r} has no weights (*.safetensors or pytorch_model*.bin); "
            f"expected {_MODEL_DIR_HELP}"
        )
    return directory


def _check_arguments(
    path: object, config: object, task: str, vocab_size: object, num_labels: object, dtype: object
) -> None:
    """Every precondition of :func:`load_model`, checked before any work; raises once."""
    errors = []
    if (path is None) == (config is None):
        errors.append(f"pass exactly one of `path` or `config`, got path={path!r}, config={config!r}")
    if config is not None and config not in config_names():
        errors.append(f"unknown model config {config!r}; known configs: {config_names()}")
    if task not in _TASKS:
        errors.append(f"`task` must be one of {_TASKS}, got {task!r}")
    if task == "seq-cls" and num_labels is None:
        errors.append("`num_labels` is required for task='seq-cls'")
    if task != "seq-cls" and num_labels is not None:
        errors.append(
            f"`num_labels` applies only to task='seq-cls', got {num_labels!r} with task={task!r}"
        )
    if num_labels is not None and (
        isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2
    ):
        errors.append(
            "`num_labels` must be an int >= 2 (1 makes Hugging Face treat it as regression), "
            f"got {num_labels!r}"
        )
    if path is not None and vocab_size is not None:
        errors.append("`vocab_size` overrides a named config only; a checkpoint at `path` fixes its own")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        errors.append(f"`dtype` must be a floating-point torch.dtype, got {dtype!r}")
    if errors:
        raise ValueError("invalid load_model arguments:\n  " + "\n  ".join(errors))


def _prepare_config(model_config: PretrainedConfig, task: str, num_labels: int | None) -> None:
    """Set the head size, and a pad id for seq-cls (HF finds the last token by it)."""
    if task != "seq-cls" or num_labels is None:
        return
    model_config.num_labels = num_labels
    if model_config.pad_token_id is None:
        # Same fallback as fedtune.data.batches: pad with eos.
        logger.info("config has no pad_token_id; using eos_token_id %s", model_config.eos_token_id)
        model_config.pad_token_id = model_config.eos_token_id


def load_model(
    *,
    path: str | os.PathLike[str] | None = None,
    config: str | None = None,
    task: ModelTask = "causal-lm",
    vocab_size: int | None = None,
    num_labels: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    weights: bool = True,
) -> PreTrainedModel:
    """Load a model from a local directory or build one from a named config.

    Args:
        path: a local Hugging Face model directory; never looked up on the Hub.
        config: a registered config name (see :func:`fedtune.models.config_names`).
        task: ``"causal-lm"`` (``AutoModelForCausalLM``), ``"seq-cls"``
            (``AutoModelForSequenceClassification``) or ``"encoder"`` (``AutoModel``, the
            bare encoder under a :class:`~fedtune.models.LabelNameClassifier`).
        vocab_size: vocabulary override for ``config`` (not allowed with ``path``).
        num_labels: number of classes, >= 2; required for, and only for, ``"seq-cls"``.
        seed: initialisation seed (weights of a named config; new heads with ``path``).
        dtype: parameter dtype. A named config is initialised in it directly (seeded, the same
            bits on every party), never through a float32 copy.
        weights: False builds a ``path`` model from its ``config.json`` alone, seeded, without
            reading (or needing) its weights: for a caller that overwrites every tensor.

    Returns:
        The model on CPU, in ``eval()`` mode.

    Raises:
        ValueError: on bad arguments (all reported together) or an unknown config name.
        FileNotFoundError: if ``path`` is not a directory with config.json and (unless
            ``weights=False``) weights.
    """
    _check_arguments(path, config, task, vocab_size, num_labels, dtype)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    auto_class: Any = {
        "seq-cls": AutoModelForSequenceClassification, "causal-lm": AutoModelForCausalLM, "encoder": AutoModel,
    }[task]
    if path is not None:
        directory = _check_model_dir(path, weights=weights)
        model_config = AutoConfig.from_pretrained(directory, local_files_only=True)
        _prepare_config(model_config, task, num_labels)
        # On CPU, with seeded RNG: a head the checkpoint lacks is initialised identically everywhere.
        with torch.device("cpu"), seeded_init(seed, "model-init"):
            if weights:
                model = auto_class.from_pretrained(
                    directory, config=model_config, local_files_only=True, dtype=dtype
                )
            else:
                model = auto_class.from_config(model_config, dtype=dtype)
        source = str(directory) if weights else f"{directory}/config.json (its weights not read)"
    else:
        model_config = build_config(cast(str, config), vocab_size=vocab_size)
        _prepare_config(model_config, task, num_labels)
        # initialised in its own dtype: a 16-bit model never has a float32 copy (7B: 28 GB)
        with torch.device("cpu"), seeded_init(seed, "model-init"):
            model = auto_class.from_config(model_config, dtype=dtype)
        source = f"config {config!r}"
    model.eval()
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("loaded %s as %s: %.2fM parameters, %s", source, task, num_params / 1e6, dtype)
    return model


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Load a Hugging Face tokenizer from a local directory (never the Hub).

    Args:
        path: a directory holding tokenizer files (tokenizer.json, tokenizer_config.json,
            vocab.txt, ...).

    Returns:
        The ``AutoTokenizer`` for that directory.

    Raises:
        FileNotFoundError: if ``path`` is not a directory or holds no tokenizer file.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{str(directory)!r} holds no tokenizer file; expected one of {list(_TOKENIZER_FILES)}"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)
