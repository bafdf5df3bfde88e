"""ONNX for on-device clients: export the loss graph (torch) and run it (ONNX Runtime).

:mod:`fedtune.onnx.files` and :mod:`fedtune.onnx.runtime` are torch-free and re-exported
here; :mod:`fedtune.onnx.export` needs torch and is imported only by name
(``from fedtune.onnx.export import export_run``).
"""

from .files import MODEL_KEY, ONNX_FILE, model_key, onnx_path_for, tokenizer_path, weights_path
from .runtime import (
    BATCH_INPUTS,
    FEATURE_INPUTS,
    FEATURES_OUTPUT,
    LOSS_OUTPUT,
    OnnxFeatures,
    OnnxInputError,
    OnnxLoss,
    check_inputs,
)

__all__ = [
    "BATCH_INPUTS",
    "FEATURES_OUTPUT",
    "FEATURE_INPUTS",
    "LOSS_OUTPUT",
    "MODEL_KEY",
    "ONNX_FILE",
    "OnnxFeatures",
    "OnnxInputError",
    "OnnxLoss",
    "check_inputs",
    "model_key",
    "onnx_path_for",
    "tokenizer_path",
    "weights_path",
]
