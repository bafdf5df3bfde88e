"""Exported graphs under ONNX Runtime: a loss with the weights as bound graph inputs, or a
frozen encoder's sentence features.

Torch-free: numpy and ``onnxruntime`` only. The loss graph (written by
:mod:`fedtune.onnx.export`) takes ``input_ids``, ``attention_mask``, ``labels`` (``int64``,
shape ``(batch, seq)``) and one ``float32`` input per trainable tensor, named as
:func:`fedtune.models.trainable_parameters` names it, and returns the scalar ``loss``
(:class:`OnnxLoss`). The features graph of a label-name classifier takes ``input_ids`` and
``attention_mask`` and returns ``features``, ``float32 (batch, hidden)``, with every
weight inside it (:class:`OnnxFeatures`).

Memory: the weights exist once, in the caller's numpy arrays. Each is wrapped in an
``OrtValue`` that points at the array's buffer (no copy) and bound to the session once;
in-place updates of the arrays (a MeZO perturbation) are what the next forward reads.
Per step only the batch is bound. docs/device.md has the measurements.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BATCH_INPUTS",
    "FEATURES_OUTPUT",
    "FEATURE_INPUTS",
    "LOSS_OUTPUT",
    "OnnxFeatures",
    "OnnxInputError",
    "OnnxLoss",
    "check_inputs",
]

BATCH_INPUTS = ("input_ids", "attention_mask", "labels")  # int64 (batch, seq)
LOSS_OUTPUT = "loss"  # float32 scalar: mean CE over the shifted labels != -100
FEATURE_INPUTS = ("input_ids", "attention_mask")  # int64 (batch, seq)
FEATURES_OUTPUT = "features"  # float32 (batch, hidden): LabelNameClassifier.features


class OnnxInputError(ValueError):
    """An ONNX graph whose inputs or outputs are not the ones the caller's weights need."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"{path}: the ONNX graph does not match the trainable tensors "
            f"({len(problems)} problem(s)); re-export it for this run "
            "(python -m fedtune.onnx.export <config.toml> <out.onnx>):\n  " + "\n  ".join(problems)
        )


def _shape(dims: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ")"


def check_inputs(
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    expected: Mapping[str, tuple[int, ...]],
    *,
    batch_inputs: Sequence[str] = BATCH_INPUTS,
    output: str = LOSS_OUTPUT,
) -> list[str]:
    """Every mismatch between a session's inputs/outputs and what fedtune feeds it.

    Args:
        inputs, outputs: ``session.get_inputs()`` / ``get_outputs()`` (objects with
            ``name``, ``shape``, ``type``).
        expected: trainable tensor name -> shape (float32 each).
        batch_inputs: the int64 ``(batch, seq)`` inputs the graph must take.
        output: the output it must have.

    Returns:
        One line per problem (missing, extra, wrong shape or dtype); empty when they match.
    """
    problems: list[str] = []
    have = {arg.name: arg for arg in inputs}
    for name in batch_inputs:
        arg = have.get(name)
        if arg is None:
            problems.append(f"missing input {name!r} (int64, shape (batch, seq))")
        elif arg.type != "tensor(int64)" or len(arg.shape) != 2:
            problems.append(f"input {name!r} is {arg.type} {_shape(arg.shape)}, expected int64 (batch, seq)")
    for name, shape in expected.items():
        arg = have.get(name)
        if arg is None:
            problems.append(f"missing input {name!r} (float32 {_shape(list(shape))})")
        elif arg.type != "tensor(float)" or list(arg.shape) != list(shape):
            problems.append(
                f"input {name!r} is {arg.type} {_shape(arg.shape)}, expected float32 {_shape(list(shape))}"
            )
    for name in have.keys() - set(batch_inputs) - expected.keys():
        problems.append(f"extra input {name!r}, which is neither a batch input nor a trainable tensor")
    if output not in {arg.name for arg in outputs}:
        problems.append(f"no output {output!r}")
    return sorted(problems)


def _session(path: str | os.PathLike[str], threads: int) -> Any:
    """A CPU ``InferenceSession`` of ``path`` with ``threads`` intra-op threads (0: ORT's default)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX model at {str(path)!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxLoss:
    """One ONNX Runtime session computing the loss of an exported model.

    Args:
        path: the ``.onnx`` file.
        expected: trainable tensor name -> shape; the graph must take exactly these.
        threads: intra-op threads (0: ONNX Runtime's default, one per physical core).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        OnnxInputError: listing every input that is missing, extra or of the wrong shape.
    """

    def __init__(self, path: str | os.PathLike[str], expected: Mapping[str, tuple[int, ...]], *, threads: int = 0) -> None:
        self.session = _session(path, threads)
        problems = check_inputs(self.session.get_inputs(), self.session.get_outputs(), expected)
        if problems:
            raise OnnxInputError(path, problems)
        self.expected = {name: tuple(shape) for name, shape in expected.items()}
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self._binding = self.session.io_binding()
        self._binding.bind_output(LOSS_OUTPUT)
        self._bound: dict[str, tuple[np.ndarray, Any]] = {}  # name -> (array, its OrtValue)

    def _bind_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Bind each array that is not bound yet (zero-copy); rebinding only on a new array."""
        from onnxruntime import OrtValue

        if weights.keys() != self.expected.keys():
            missing, extra = self.expected.keys() - weights.keys(), weights.keys() - self.expected.keys()
            raise ValueError(f"`weights` must hold exactly the graph's tensors: missing {sorted(missing)}, "
                             f"extra {sorted(extra)}")
        for name, array in weights.items():
            bound = self._bound.get(name)
            if bound is not None and bound[0] is array:
                continue
            if array.dtype != np.float32 or not array.flags.c_contiguous or array.shape != self.expected[name]:
                raise ValueError(f"weight {name!r} must be a C-contiguous float32 array of shape "
                                 f"{self.expected[name]}, got {array.dtype} {array.shape}")
            value = OrtValue.ortvalue_from_numpy(array)  # wraps the buffer: no copy on CPU
            self._binding.bind_ortvalue_input(name, value)
            self._bound[name] = (array, value)

    def loss(self, weights: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray]) -> float:
        """The mean token cross-entropy of ``batch`` under ``weights``.

        Args:
            weights: trainable name -> float32 array (bound once, read in place).
            batch: ``input_ids``, ``attention_mask``, ``labels``: int64 ``(batch, seq)``.

        Returns:
            The loss (nan when the batch has no supervised token).
        """
        self._bind_weights(weights)
        for name in BATCH_INPUTS:
            self._binding.bind_cpu_input(name, np.ascontiguousarray(batch[name], dtype=np.int64))
        self.session.run_with_iobinding(self._binding)
        return float(self._binding.copy_outputs_to_cpu()[0])


class OnnxFeatures:
    """One ONNX Runtime session computing a frozen encoder's sentence features.

    The graph is :meth:`fedtune.models.LabelNameClassifier.features` with every weight inside
    it: a device whose trainable tensors are all in the label-name head runs it once over
    its data and takes its zeroth-order steps on the head alone (:mod:`fedtune.device.head`).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (0: ONNX Runtime's default, one per physical core).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        OnnxInputError: if the graph's inputs or outputs are not those of a features graph.
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 0) -> None:
        self.session = _session(path, threads)
        problems = check_inputs(self.session.get_inputs(), self.session.get_outputs(), {},
                                batch_inputs=FEATURE_INPUTS, output=FEATURES_OUTPUT)
        if problems:
            raise OnnxInputError(path, problems)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def features(self, encoded: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
        """The features of every row of ``encoded``, ``batch_size`` rows per session run.

        Args:
            encoded: ``input_ids`` and ``attention_mask``, int64 ``(N, T)``.
            batch_size: rows per run, >= 1 (bounds the activations' memory).

        Returns:
            float32 ``(N, hidden)``, C-contiguous.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an int >= 1, got {batch_size!r}")
        inputs = {name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in FEATURE_INPUTS}
        rows = int(inputs["input_ids"].shape[0])
        chunks = [
            self.session.run([FEATURES_OUTPUT], {name: a[start : start + batch_size] for name, a in inputs.items()})[0]
            for start in range(0, rows, batch_size)
        ]
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
