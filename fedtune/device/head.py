"""The loss of a label-name head on frozen sentence features, in numpy: the device's twin
of :meth:`fedtune.models.LabelNameClassifier.classify`.

When every tensor a run trains is in the label-name head, the encoder below it never
changes, so a device computes its examples' features once (ONNX Runtime,
:class:`fedtune.onnx.OnnxFeatures`) and each zeroth-order step costs two small matrix
products instead of two encoder forwards, as the torch client's feature cache does
(:mod:`fedtune.zo.client`). Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["BIAS", "WEIGHT", "head_loss"]

WEIGHT, BIAS = "classifier.weight", "classifier.bias"  # the head's tensors, named as in torch


def head_loss(features: np.ndarray, labels: np.ndarray, head: Mapping[str, np.ndarray]) -> float:
    """Mean cross-entropy of ``logits = features @ W.T + b``, in float32.

    What ``torch.nn.functional.cross_entropy(logits.float(), labels)`` computes, to
    float32 rounding: the matrix product and the log-sum-exp's summation order differ
    from torch's kernels, so the two agree to a few ulps, not bit for bit.

    Args:
        features: float32 ``(B, H)``.
        labels: int ``(B,)``, class ids in ``[0, C)``.
        head: :data:`WEIGHT` float32 ``(C, H)`` and :data:`BIAS` float32 ``(C,)``.

    Returns:
        The loss (nan or inf when the logits are not finite).
    """
    logits = features @ head[WEIGHT].T + head[BIAS]  # (B, C), float32
    with np.errstate(invalid="ignore", over="ignore"):  # a non-finite perturbed head: the step is skipped
        # log_softmax as torch orders it: (x - max) - log(sum(exp(x - max)))
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    picked = log_probs[np.arange(labels.shape[0]), labels]  # (B,)
    return float(-(picked.sum(dtype=np.float32) / np.float32(labels.shape[0])))
