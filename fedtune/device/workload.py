"""A device's share of a run's data, without torch: tokenizer, examples, its partition.

Mirrors the data side of :class:`fedtune.workload.Workload` (which imports torch): the
same examples (:mod:`fedtune.data.sources`), the same split into train and held-out, the
same partition of client ``partition_id`` and the same encoding, as numpy arrays.
``tests/device/test_device_workload.py`` checks it against ``Workload`` array for array.

Two kinds of run (:func:`fedtune.config.device_mode`): a ``model.config`` causal LM with
fedtune's word tokenizer, built from the examples; and a pretrained sentence encoder's
label-name head, whose Hugging Face tokenizer is read from the ``tokenizers`` file
written beside the export (:func:`fedtune.onnx.tokenizer_path`), with no transformers.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fedtune import data as fdata
from fedtune.config import DEVICE_SUPPORT, RunConfig, device_mode
from fedtune.data.arrays import encode_classification, encode_lm
from fedtune.data.sources import label_names, load_examples
from fedtune.rng import derive_seed

__all__ = ["DeviceWorkload", "FileTokenizer"]


class FileTokenizer:
    """A ``tokenizers`` JSON file behind the Hugging Face calls fedtune's encoders make.

    ``encode(text, add_special_tokens=..., truncation=..., max_length=...)`` and
    ``pad_token_id``, as :func:`fedtune.data.arrays.encode_classification` uses them; the
    file's padding names the pad id (the export writes it so), and neither its padding nor
    its truncation applies to :meth:`encode`.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file names no pad token.
    """

    bos_token_id = None
    eos_token_id = None

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from tokenizers import Tokenizer

        if not Path(path).is_file():
            raise FileNotFoundError(f"no tokenizer at {str(path)!r}: fedtune.onnx.export writes it beside the export")
        self._tokenizer = Tokenizer.from_file(str(path))
        padding = self._tokenizer.padding
        if padding is None:
            raise ValueError(f"{path} names no pad token (its padding is off): re-export it with fedtune.onnx.export")
        self.pad_token_id = int(padding["pad_id"])
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def encode(self, text: str, add_special_tokens: bool = True, truncation: bool = False,
               max_length: int | None = None) -> list[int]:
        """Token ids of ``text``; with ``truncation``, cut to ``max_length`` ids (special tokens kept)."""
        if not truncation:
            return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)
        if max_length is None:
            raise ValueError("`truncation` needs `max_length`")
        self._tokenizer.enable_truncation(max_length)
        try:
            return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)
        finally:
            self._tokenizer.no_truncation()


class DeviceWorkload:
    """The tokenizer and data of one run, as a device client builds them.

    Args:
        cfg: the run's config.
        tokenizer_file: a label-name head run's ``tokenizers`` file (beside the export).

    Raises:
        ValueError: for a run no device mode supports (:data:`fedtune.config.DEVICE_SUPPORT`),
            or a label-name head run without ``tokenizer_file``.
    """

    def __init__(self, cfg: RunConfig, tokenizer_file: str | os.PathLike[str] | None = None) -> None:
        mode = device_mode(cfg)
        if mode is None:
            m = cfg.model
            raise ValueError(
                f"device clients need a `model.config` run or a label-name head run: they support {DEVICE_SUPPORT}; "
                f"got model.path={m.path!r}, config={m.config!r}, task={m.task!r}, head={m.head!r}, "
                f"trainable={list(m.trainable)}"
            )
        if mode == "head" and tokenizer_file is None:
            raise ValueError(f"model.path={cfg.model.path!r}: a device needs the model's tokenizer file, which "
                             "fedtune.onnx.export writes beside the export (fedtune.onnx.tokenizer_path)")
        self.cfg, self.mode, self.tokenizer_file = cfg, mode, tokenizer_file

    @cached_property
    def examples(self) -> tuple[list[fdata.Example], list[fdata.Example]]:
        """(train, held-out) examples, as :class:`fedtune.workload.Workload` makes them."""
        return load_examples(self.cfg)

    @cached_property
    def tokenizer(self) -> Any:
        """fedtune's word tokenizer (``model.config``), or the pretrained model's (:class:`FileTokenizer`)."""
        if self.tokenizer_file is not None and self.mode == "head":
            return FileTokenizer(self.tokenizer_file)
        if self.cfg.data.source == "instructions":
            return fdata.WordTokenizer.for_instructions()
        train, held_out = self.examples
        words = sorted({w for ex in train + held_out for w in f"{ex.prompt} {ex.response}".split()})
        return fdata.WordTokenizer(words)

    @cached_property
    def label_names(self) -> tuple[str, ...]:
        """One name per class of a label-name head run (the head itself comes from the export)."""
        train, held_out = self.examples
        return label_names(self.cfg, max(2, 1 + max(ex.label for ex in train + held_out)))

    def partition(self, partition_id: int, num_partitions: int) -> list[int]:
        """Indices of the training examples of client ``partition_id``."""
        if not 0 <= partition_id < num_partitions:
            raise ValueError(f"partition id {partition_id} is outside [0, {num_partitions})")
        d, seed = self.cfg.data, derive_seed(self.cfg.seed, "partition")
        labels = [ex.label for ex in self.examples[0]]
        if d.partition == "iid":
            parts = fdata.partition_iid(len(labels), num_partitions, seed)
        elif d.partition == "dirichlet":
            parts = fdata.partition_dirichlet(labels, num_partitions, d.alpha, seed)
        else:
            parts = fdata.partition_by_label(labels, num_partitions, d.labels_per_partition, seed)
        return [int(i) for i in parts[partition_id]]

    def encode(self, examples: list[fdata.Example]) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` and ``labels`` as the torch Workload encodes them."""
        encoder = encode_classification if self.mode == "head" else encode_lm
        return encoder(examples, self.tokenizer, max_length=self.cfg.data.max_length)
