"""Models for fedtune: named configs, deterministic building, local loading, fingerprints.

``transformers`` is imported only when a config or model is actually built or loaded,
since importing it takes seconds.
"""

from ._configs import build_config, config_names, register_config
from ._heads import HEAD_FILE, LabelNameClassifier, VerbalizerClassifier, is_causal_lm_config
from ._loading import ModelTask, load_model, load_tokenizer
from ._packaged import PACKAGE_PREFIX, resolve_model_path
from ._parameters import fingerprint, trainable_parameters
from ._quantize import QUANTIZE, quantize_base

__all__ = [
    "HEAD_FILE",
    "PACKAGE_PREFIX",
    "QUANTIZE",
    "LabelNameClassifier",
    "ModelTask",
    "VerbalizerClassifier",
    "build_config",
    "config_names",
    "fingerprint",
    "is_causal_lm_config",
    "load_model",
    "load_tokenizer",
    "quantize_base",
    "register_config",
    "resolve_model_path",
    "trainable_parameters",
]
