"""Export a fedtune model's causal-LM loss to ONNX, with the trainable tensors as graph inputs.

The torch side of the on-device path (docs/device.md). The graph computes what
``model(input_ids=..., attention_mask=..., labels=...).loss`` computes in Hugging Face
(mean cross-entropy over the shifted labels != -100) and takes every trainable tensor as
a ``float32`` graph input named as :func:`fedtune.models.trainable_parameters` names it:
those names key the perturbation stream z, so a device perturbs exactly what a torch
client perturbs. Frozen tensors stay inside the graph as initializers.

Exporter: torch 2.13's ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript),
opset :data:`OPSET`. The legacy TorchScript exporter (``dynamo=False``) still exists but
cannot trace ``torch.func.functional_call``, which is how the weights become inputs.

Beside ``model.onnx`` goes ``model.init.safetensors``: the trainable tensors at global
state 0, which a device cannot build without torch. Both carry the run's model key.

A pretrained sentence encoder whose label-name head is all a run trains (the device mode
``"head"`` of :func:`fedtune.config.device_mode`) is exported differently: the graph is the
frozen encoder's features (:meth:`fedtune.models.LabelNameClassifier.features`), the
weights file holds the whole head at state 0 (computed by torch, so devices never
recompute the label-name embeddings), and ``model.tokenizer.json`` is the model's tokenizer.

    python -m fedtune.onnx.export simulations/mixed-device.toml model.onnx
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call

from fedtune.config import RunConfig, device_mode, load_config
from fedtune.data.arrays import pad_id
from fedtune.emulator import global_names
from fedtune.models import LabelNameClassifier
from fedtune.zo.client import frozen_head

from .files import MODEL_KEY, model_key, tokenizer_path, weights_path
from .runtime import BATCH_INPUTS, FEATURE_INPUTS, FEATURES_OUTPUT, LOSS_OUTPUT

__all__ = ["OPSET", "export_features", "export_loss", "export_run", "write_tokenizer"]

log = logging.getLogger(__name__)

OPSET = 18  # ONNX Runtime >= 1.14 runs it; 18 is the oldest opset the dynamo exporter targets


class _FeaturesGraph(torch.nn.Module):
    """``features(input_ids, attention_mask)`` of a label-name classifier: ``(B, T) -> (B, H)``."""

    def __init__(self, model: LabelNameClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
        return self.model.features(input_ids, attention_mask)


class _LossGraph(torch.nn.Module):
    """``loss(input_ids, attention_mask, labels, weights)`` with ``weights`` replacing the named tensors."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model, self.names = model, list(names)

    def forward(self, input_ids, attention_mask, labels, weights: list[torch.Tensor]):  # type: ignore[no-untyped-def]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        # tie_weights=True: a tied tensor (Llama's lm_head = embed_tokens) is one input.
        return functional_call(self.model, dict(zip(self.names, weights)), (), batch, tie_weights=True).loss


def export_loss(
    model: torch.nn.Module,
    params: Sequence[tuple[str, torch.Tensor]],
    example: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the loss graph of ``model`` to ``path`` (atomically), weights as inputs.

    Args:
        model: a causal-LM from :mod:`fedtune.models`, on the CPU, in eval mode.
        params: the trainable ``(name, tensor)`` pairs; each becomes a graph input of that name
            (an emulator's tensors under the full model's names, :func:`fedtune.emulator.global_names`).
        example: a batch to trace with (int64 ``(B, T)``, ``B, T >= 2``); batch and sequence
            length are dynamic in the graph (``batch``, ``seq``).
        path: the ``.onnx`` file to write.
        metadata: string pairs stored in the model's ``metadata_props``.

    Returns:
        ``path``.
    """
    names = [name for name, _ in params]
    own = {full: mine for mine, full in global_names(model).items()}  # an emulator's own names of the full model's
    args = tuple(example[name] for name in BATCH_INPUTS) + ([p.detach() for _, p in params],)
    return _export(_LossGraph(model, [own[n] for n in names]), args, [*BATCH_INPUTS, *names], LOSS_OUTPUT, path,
                   weights=len(names), metadata=metadata)


def export_features(
    model: LabelNameClassifier,
    example: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the features graph of a label-name classifier to ``path`` (atomically).

    The graph is :meth:`LabelNameClassifier.features`: ``input_ids`` and ``attention_mask``
    (int64 ``(batch, seq)``, both axes dynamic) in, ``features`` (float32
    ``(batch, hidden)``) out, every encoder weight an initializer. The head is not in it: a
    device trains the head on these features in numpy (:mod:`fedtune.device.head`).

    Args:
        model: the classifier, on the CPU, in eval mode.
        example: a batch to trace with (``B, T >= 2``).
        path: the ``.onnx`` file to write.
        metadata: string pairs stored in the model's ``metadata_props``.

    Returns:
        ``path``.
    """
    args = tuple(example[name] for name in FEATURE_INPUTS)
    return _export(_FeaturesGraph(model), args, list(FEATURE_INPUTS), FEATURES_OUTPUT, path, metadata=metadata)


def _export(
    module: torch.nn.Module,
    args: tuple[Any, ...],
    input_names: list[str],
    output: str,
    path: str | os.PathLike[str],
    *,
    weights: int = 0,
    metadata: dict[str, str] | None = None,
) -> Path:
    """``torch.onnx.export`` of ``module`` on ``args``: the leading int64 ``(batch, seq)``
    inputs dynamic, then ``weights`` tensors as one list argument; saved atomically."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    batch_inputs = input_names[: len(input_names) - weights]
    dynamic: dict[str, Any] = {name: {0: batch, 1: seq} for name in batch_inputs}
    if weights:
        dynamic["weights"] = [None] * weights
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with warnings.catch_warnings(), torch.inference_mode(False):
        # The exporter warns about every traced HF branch and each missing torchvision op.
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                module, args, dynamo=True, opset_version=OPSET, verbose=False,
                input_names=input_names, output_names=[output], dynamic_shapes=dynamic,
            )
        finally:
            exporter_log.setLevel(level)
    if program is None:  # only when given a file name, which this call does not
        raise RuntimeError("torch.onnx.export returned no ONNX program")
    shape: Any = program.model.graph.inputs[0].shape  # (batch, seq), symbolic
    program.rename_axes({shape[0]: "batch", shape[1]: "seq"})
    program.model.metadata_props.update(metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # a reader never sees half a file
        staged = Path(tmp) / path.name
        program.save(staged)  # frozen tensors over 2 GB go to <name>.data beside it
        for extra in Path(tmp).iterdir():
            if extra != staged:
                os.replace(extra, path.parent / extra.name)
        os.replace(staged, path)
    return path


def export_run(cfg: RunConfig, path: str | os.PathLike[str]) -> Path:
    """Export ``cfg``'s base model (the model its clients run: an Offsite-Tuning run's emulator)
    to ``path`` and its initial weights to :func:`weights_path`.

    Builds its own CPU copy of the model (seeded: the same state 0 every party builds). A
    run whose device clients train a label-name head (:func:`fedtune.config.device_mode`
    ``"head"``) gets the frozen encoder's features graph, the whole head (its frozen part
    too) as the weights, and the model's tokenizer at :func:`tokenizer_path`; any other run
    gets the loss graph with the trainable tensors as inputs.

    Returns:
        ``path``.

    Raises:
        ValueError: for a ``"head"`` run whose model is not a label-name classifier with its
            trainable tensors in the head, or whose tokenizer has no ``tokenizers`` backend.
    """
    from fedtune.workload import Workload

    workload = Workload(cfg)
    model = workload.build_model(client=True).cpu()  # what a client runs (Offsite-Tuning: the emulator)
    params = workload.trainable(model)  # named as the full model names them
    example = workload.encode(workload.examples[0][:4])
    metadata = {MODEL_KEY: model_key(cfg)}
    if device_mode(cfg) == "head":
        head = frozen_head(model, [name for name, _ in params])
        if head is None:
            raise ValueError(f"`model.path` = {cfg.model.path!r} with head 'label-names' is not a sentence encoder's "
                             "LabelNameClassifier with every trainable tensor in its head: devices cannot train it")
        path = export_features(head, example, path, metadata=metadata)
        weights = {f"classifier.{name}": t for name, t in head.classifier.state_dict().items()}
        write_tokenizer(workload.tokenizer, tokenizer_path(path))
        what = "the features graph, the label-name head and the tokenizer"
    else:
        path = export_loss(model, params, example, path, metadata=metadata)
        weights = dict(params)
        what = f"the loss graph ({len(params)} trainable tensors as inputs)"
    _write_weights(weights, weights_path(path), metadata)
    log.info("exported %s to %s (opset %d) and %s", what, path, OPSET, weights_path(path).name)
    return path


def _write_weights(weights: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """The tensors' exact bits as a safetensors file, atomically."""
    from safetensors.numpy import save_file

    staged = path.with_name(path.name + ".tmp")
    save_file({name: t.detach().cpu().numpy() for name, t in weights.items()}, str(staged), metadata=metadata)
    os.chmod(staged, 0o644)  # safetensors creates it owner-only; devices may run as another user
    os.replace(staged, path)


def write_tokenizer(tokenizer: Any, path: Path) -> None:
    """The Hugging Face tokenizer's ``tokenizers`` backend as one JSON file, atomically.

    Truncation is off and padding names the pad id (:func:`fedtune.data.arrays.pad_id`), so
    a device reads the pad id from the file and encodes as the torch side does.
    """
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} has no `tokenizers` backend (a tokenizer.json): "
                         "devices cannot encode with it")
    copy = Tokenizer.from_str(backend.to_str())  # the workload's tokenizer keeps its settings
    copy.no_truncation()
    pad = pad_id(tokenizer)
    copy.enable_padding(pad_id=pad, pad_token=copy.id_to_token(pad))
    staged = path.with_name(path.name + ".tmp")
    copy.save(str(staged))
    os.replace(staged, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedtune.onnx.export", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the experiment TOML")
    parser.add_argument("out", help="the .onnx file to write (weights go beside it)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    path = export_run(cfg, args.out)
    print(path)
    print(weights_path(path))
    if device_mode(cfg) == "head":
        print(tokenizer_path(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
