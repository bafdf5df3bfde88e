"""Where an export lives and how it names the model it holds (torch-free).

An export is two files: the loss graph (``model.onnx``) and, beside it, the trainable
tensors at global state 0 (``model.init.safetensors``), which a device cannot build without
torch. Both carry :data:`MODEL_KEY` in their metadata, so a device refuses files exported
for another model before it spends a forward. For a pretrained sentence encoder with a
label-name head the graph computes the frozen encoder's features instead, the weights file
holds the whole head, and a third file, ``model.tokenizer.json``, is the model's tokenizer.

Where the graph is found: ``ondevice.onnx_path`` if set, else ``<run dir>/model.onnx``,
which the ServerApp exports before the first round. ``fedtune run`` tells every party the
run directory (:data:`fedtune.runs.ENV_RUN_DIR`); under ``flwr run`` only the ServerApp
knows it, so device clients there need ``ondevice.onnx_path``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fedtune.config import RunConfig

__all__ = ["MODEL_KEY", "ONNX_FILE", "model_key", "onnx_path_for", "tokenizer_path", "weights_path"]

ONNX_FILE = "model.onnx"
MODEL_KEY = "fedtune.model-key"  # metadata key of both files
_WEIGHTS_SUFFIX = ".init.safetensors"
_TOKENIZER_SUFFIX = ".tokenizer.json"


def model_key(cfg: RunConfig) -> str:
    """What decides the exported graph and initial weights: seed, model and data source (vocabulary)."""
    text = repr((cfg.seed, cfg.model, cfg.data.source, cfg.data.path))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_path(onnx_path: str | os.PathLike[str]) -> Path:
    """The initial trainable weights beside an export: ``model.onnx`` -> ``model.init.safetensors``."""
    path = Path(onnx_path)
    return path.with_name(path.stem + _WEIGHTS_SUFFIX)


def tokenizer_path(onnx_path: str | os.PathLike[str]) -> Path:
    """A pretrained model's tokenizer beside its export: ``model.onnx`` -> ``model.tokenizer.json``.

    A Hugging Face ``tokenizers`` file (``tokenizers.Tokenizer.from_file`` loads it without
    transformers) whose padding names the pad token; truncation is off.
    """
    path = Path(onnx_path)
    return path.with_name(path.stem + _TOKENIZER_SUFFIX)


def onnx_path_for(cfg: RunConfig, run_dir: str | os.PathLike[str] | None) -> Path:
    """The graph a device client of ``cfg``'s run loads.

    Raises:
        ValueError: if ``ondevice.onnx_path`` is unset and the run directory is unknown.
    """
    if cfg.ondevice.onnx_path:
        return Path(cfg.ondevice.onnx_path)
    if run_dir is None:
        raise ValueError(
            "device clients cannot find the ONNX model: `ondevice.onnx_path` is unset and the run "
            "directory is unknown here (it is under `fedtune run`, not under `flwr run`); export one with "
            "`python -m fedtune.onnx.export <config.toml> <out.onnx>` and set ondevice.onnx_path"
        )
    return Path(run_dir) / ONNX_FILE
