"""What every party builds from a :class:`~fedtune.config.RunConfig`: model, tokenizer, data.

Server and clients build the same base model (seeded from the run's seed, or loaded from
a local path), the same tokenizer and the same dataset; a client then keeps its own
partition and the server the held-out evaluation set. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import torch

from fedtune import algorithms, models
from fedtune import data as fdata
from fedtune import emulator as emu
from fedtune.config import RunConfig
from fedtune.data.batches import IGNORE_INDEX, encode_classification, encode_lm
from fedtune.data.sources import holdout_rows, label_names, load_examples
from fedtune.dtypes import autocast, float32_loss, torch_dtype
from fedtune.lru import LRU, PARTITION_CACHE
from fedtune.metrics import GENERATION_METRICS, exact_match, rouge_l
from fedtune.metrics import macro_f1 as macro_f1_score
from fedtune.progress import Progress
from fedtune.rng import derive_seed, generator

__all__ = ["Workload", "label_names", "pick_device"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` = {name!r} but CUDA is not available here; use auto or cpu")
    return device


@dataclass(frozen=True)
class FileData:
    """A ``data.source = "file"`` dataset as read, split into training and held-out rows.

    ``train_values`` are the training rows' ``data.partition_field`` values; ``label_names``
    the classes' names when the labels were strings (else empty).
    """

    train: list[fdata.Example]
    held_out: list[fdata.Example]
    train_values: list[str]
    label_names: tuple[str, ...]


def _load_file(cfg: RunConfig, tokenizer: Any = None) -> FileData:
    """Read ``data.path`` (and ``data.eval_path``) with :func:`fedtune.data.hf.load_examples`.

    The held-out rows come from ``data.eval_path`` / ``data.eval_split`` when given (a seeded
    sample of ``eval_examples`` of them), else from ``data.path`` as for jsonl/csv.
    """
    from fedtune.data.hf import load_examples

    d = cfg.data
    sources = [(d.path, d.split)]
    separate_eval = bool(d.eval_path or d.eval_split)
    if separate_eval:
        sources.append((d.eval_path or d.path, d.eval_split or d.split))
    loaded, names = load_examples(
        sources, template=d.template, fields=dict(d.fields), partition_field=d.partition_field,
        tokenizer=tokenizer, seq_cls=cfg.model.task == "seq-cls",
    )
    rows = loaded[0]
    if separate_eval:
        held = loaded[1].examples
        pick = generator(cfg.seed, "holdout").permutation(len(held))[: d.eval_examples].tolist()
        return FileData(rows.examples, [held[i] for i in sorted(pick)], rows.values, names)
    if len(rows.examples) < 2:
        raise ValueError(f"`data.path` {d.path!r} holds {len(rows.examples)} row(s); need at least 2 to hold "
                         "some out, or give data.eval_path")
    train_rows, eval_rows = holdout_rows(cfg, len(rows.examples))
    return FileData([rows.examples[i] for i in train_rows], [rows.examples[i] for i in eval_rows],
                    [rows.values[i] for i in train_rows], names)


def _encodable(items: list[T], keep: list[bool]) -> list[T]:
    """The items whose ``keep`` flag is set, in order."""
    return [item for item, ok in zip(items, keep, strict=True) if ok]


@dataclass
class Workload:
    """Model, tokenizer and data of one run, as one party builds them."""

    cfg: RunConfig
    device: torch.device = field(init=False)
    # encoded local held-out shares (eval.federated) of the clients this process played last
    _local_eval: LRU[tuple[int, int], dict[str, torch.Tensor]] = field(
        init=False, repr=False, default_factory=lambda: LRU(PARTITION_CACHE))

    def __post_init__(self) -> None:
        self.device = pick_device(self.cfg.device)

    @cached_property
    def tokenizer(self) -> Any:
        m = self.cfg.model
        if m.path:
            return models.load_tokenizer(models.resolve_model_path(m.path))
        if self.cfg.data.source == "instructions":
            return fdata.WordTokenizer.for_instructions()
        texts = [f"{ex.prompt} {ex.response}" for ex in self._all_examples]
        if self.cfg.model.head == "label-names":  # the head scores (or embeds) the names' words
            texts += list(self.label_names)
        return fdata.WordTokenizer(sorted({w for text in texts for w in text.split()}))

    @cached_property
    def examples(self) -> tuple[list[fdata.Example], list[fdata.Example]]:
        """(train, held-out) examples; a file source's rows that cannot be encoded are dropped."""
        if self.cfg.data.source != "file":
            return load_examples(self.cfg)
        data = self._file_data
        return self._drop_unencodable(data.train, "train"), self._drop_unencodable(data.held_out, "held-out")

    @cached_property
    def _file_data(self) -> FileData:
        chat = self.cfg.data.template == "chat"  # rendered with the model's tokenizer (a model.path one)
        return _load_file(self.cfg, self.tokenizer if chat else None)

    @cached_property
    def _all_examples(self) -> list[fdata.Example]:
        """Every example read, before any is dropped: the word vocabulary and the classes come from these."""
        if self.cfg.data.source == "file":
            return self._file_data.train + self._file_data.held_out
        train, held_out = self.examples
        return train + held_out

    @cached_property
    def _train_kept(self) -> list[bool]:
        return self._keep(self._file_data.train, "train")

    def _keep(self, examples: list[fdata.Example], which: str) -> list[bool]:
        """Which examples encode, with ONE summary line for those that do not."""
        if self.cfg.model.task == "seq-cls":
            reasons = [None if ex.text.strip() else "empty text" for ex in examples]
        else:
            from fedtune.data.arrays import lm_skip_reason

            length = self.cfg.data.max_length
            reasons = [lm_skip_reason(ex, self.tokenizer, max_length=length) for ex in examples]
        skipped = Counter(r for r in reasons if r is not None)
        if skipped:
            log.warning(
                "skipped %d of %d %s rows of %s that cannot be encoded (%s; data.max_length = %d)",
                sum(skipped.values()), len(examples), which, self.cfg.data.path,
                ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())), self.cfg.data.max_length,
            )
        return [r is None for r in reasons]

    def _drop_unencodable(self, examples: list[fdata.Example], which: str) -> list[fdata.Example]:
        keep = self._train_kept if which == "train" else self._keep(examples, which)
        return _encodable(examples, keep)

    @cached_property
    def partition_values(self) -> list[str]:
        """The training examples' ``data.partition_field`` values (file sources)."""
        return _encodable(self._file_data.train_values, self._train_kept)

    @cached_property
    def num_labels(self) -> int:
        """Classes of a seq-cls head: the largest label in the data plus one (at least 2)."""
        return max(2, 1 + max(ex.label for ex in self._all_examples))

    @cached_property
    def label_names(self) -> tuple[str, ...]:
        """One name per class (``data.label_names``, else the generated task's own).

        Raises:
            ValueError: if their number differs from the data's classes.
        """
        found = self._file_data.label_names if self.cfg.data.source == "file" else ()
        return label_names(self.cfg, self.num_labels, found)

    def build_model(self, *, client: bool = False) -> torch.nn.Module:
        """A fresh copy of the base model on this party's device, in eval mode.

        With ``model.head = "label-names"`` the seq-cls head starts as the zero-shot
        classifier (:mod:`fedtune.models`' heads); with ``algorithm.params = "lora"`` (a
        zeroth-order run over adapters) the model comes wrapped in PEFT LoRA adapters.
        ``client``: the model a client runs, which an algorithm may make from the full one
        (Offsite-Tuning: its emulator, :attr:`fedtune.algorithms.Algorithm.client_model`).
        """
        spec = algorithms.get(self.cfg.algorithm.name)
        # a client whose every tensor comes from the algorithm's files (a published emulator) never
        # reads the checkpoint's weights: the owner's model stays with the owner
        given = client and spec.client_tensors_given is not None and spec.client_tensors_given(self.cfg)
        model = self.build_base_model(weights=not given)
        if client and spec.client_model is not None:
            model = spec.client_model(self.cfg, model)
        if self.cfg.algorithm.params == "lora":
            from fedtune.lora.adapters import inject_lora

            model = inject_lora(model, self.cfg.lora, self.cfg.model.task, self.cfg.seed)
        model.to(self.device)
        return model.eval()

    def build_base_model(self, *, quantize: bool = True, weights: bool = True) -> torch.nn.Module:
        """The model before any LoRA adapter, on CPU: what a PEFT adapter of the run sits on.

        With ``model.quantize`` its linear layers (but the head) are quantised by bitsandbytes
        (:func:`fedtune.models.quantize_base`), before a label-names head is computed, so the
        head starts at the quantised model's own zero-shot classifier; ``quantize=False``
        gives the unquantised base (what a saved run's ``base/`` holds). ``weights=False``:
        a ``model.path`` model is built from its ``config.json`` alone, seeded, its weights
        not read (every tensor is overwritten afterwards: a published emulator).
        """
        m = self.cfg.model
        vocab = None if m.path else self.tokenizer.vocab_size
        path = models.resolve_model_path(m.path) if m.path else None
        model: torch.nn.Module
        if m.head == "label-names":
            causal = self._is_causal_lm(path)
            base = models.load_model(
                path=path, config=m.config or None, task="causal-lm" if causal else "encoder",
                vocab_size=vocab, seed=self.cfg.seed, dtype=torch_dtype(m.dtype), weights=weights,
            )
            if quantize:
                models.quantize_base(base, m.quantize, torch_dtype(m.dtype))
            if causal:
                model = models.VerbalizerClassifier(base, self.tokenizer, self.label_names)
            else:  # the head is computed on CPU, before the move: every party gets the same bits
                model = models.LabelNameClassifier(base, self.tokenizer, self.label_names, scale=m.head_scale)
        else:
            num_labels = self.num_labels if m.task == "seq-cls" else None
            model = models.load_model(
                path=path, config=m.config or None,
                task=m.task, vocab_size=vocab, num_labels=num_labels, seed=self.cfg.seed,
                dtype=torch_dtype(m.dtype), weights=weights,
            )
            if quantize:
                models.quantize_base(model, m.quantize, torch_dtype(m.dtype))
        return model

    def save(self, model: torch.nn.Module, directory: str | Path) -> None:
        """Save the run's final ``model`` where the standard tools load it (:func:`save_model`).

        A PEFT model is saved as its adapter; when the base was built from a named config
        (no ``model.path`` to point at) the base is saved beside it, under ``base/``.
        """
        base = None
        if hasattr(model, "peft_config") and not self.cfg.model.path:
            base = self.build_base_model(quantize=False)
        save_model(model, directory, self.tokenizer, task=self.cfg.model.task, base_model=base)

    def _is_causal_lm(self, path: str | None) -> bool:
        if path is None:
            return models.is_causal_lm_config(models.build_config(self.cfg.model.config, vocab_size=None))
        from transformers import AutoConfig

        return models.is_causal_lm_config(AutoConfig.from_pretrained(path, local_files_only=True))

    def trainable(self, model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
        """The tensors a zeroth-order run perturbs, with the names that key their directions.

        ``algorithm.params = "lora"``: the PEFT adapter's tensors (and a seq-cls head) under
        their PEFT file names; otherwise the model's parameters. ``model.trainable``'s
        patterns, when given, select among them. An algorithm that names its tensors
        (:attr:`fedtune.algorithms.Algorithm.tuned`) gets those, under the full model's names
        (an emulator's renumbered blocks mapped back).
        """
        spec = algorithms.get(self.cfg.algorithm.name)
        if spec.tuned is not None:  # the algorithm names them (Offsite-Tuning: the adapter blocks), by full-model name
            wanted = set(spec.tuned(self.cfg, model))
            full = emu.global_names(model)
            return [(full[name], p) for name, p in model.named_parameters() if full[name] in wanted]
        if self.cfg.algorithm.params == "lora":
            from fedtune.lora.adapters import adapter_parameters

            named = list(adapter_parameters(model).items())
            return select_parameters(named, self.cfg.model.trainable)
        return list(models.trainable_parameters(model, self.cfg.model.trainable))

    @cached_property
    def partition_labels(self) -> list[int]:
        return [ex.label for ex in self.examples[0]]

    def partition(self, partition_id: int, num_partitions: int) -> list[int]:
        """Indices of the training examples of client ``partition_id`` (without its local
        held-out share under ``eval.federated``: :meth:`local_split`)."""
        return self.local_split(partition_id, num_partitions)[0]

    def local_split(self, partition_id: int, num_partitions: int) -> tuple[list[int], list[int]]:
        """Client ``partition_id``'s examples as (train, local held-out) indices, each ascending.

        Without ``eval.federated`` the held-out part is empty and the train part the whole
        partition, as it always was. With it, a permutation seeded by ``(seed,
        "fed-holdout", partition_id)`` picks ``floor(eval.federated_holdout x n)`` of the
        client's n examples, at least 1 and at most n - 1 (a client keeps one to train on).
        """
        if not 0 <= partition_id < num_partitions:
            raise ValueError(f"partition id {partition_id} is outside [0, {num_partitions})")
        indices = [int(i) for i in self.partitions(num_partitions)[partition_id]]
        if not self.cfg.eval.federated:
            return indices, []
        n = len(indices)
        held = min(max(1, int(self.cfg.eval.federated_holdout * n)), n - 1)
        order = generator(self.cfg.seed, "fed-holdout", partition_id).permutation(n)
        out = set(order[:held].tolist())
        return [i for k, i in enumerate(indices) if k not in out], [i for k, i in enumerate(indices) if k in out]

    def partitions(self, num_partitions: int) -> list[Any]:
        """Every client's training example indices (sorted int64 arrays), by ``data.partition``."""
        d, seed = self.cfg.data, derive_seed(self.cfg.seed, "partition")
        if d.partition == "iid":
            parts = fdata.partition_iid(len(self.partition_labels), num_partitions, seed)
        elif d.partition == "dirichlet":
            parts = fdata.partition_dirichlet(self.partition_labels, num_partitions, d.alpha, seed)
        elif d.partition == "by-field":
            parts = fdata.partition_by_field(self.partition_values, num_partitions, seed, group=d.group_values)
        else:
            parts = fdata.partition_by_label(
                self.partition_labels, num_partitions, d.labels_per_partition, seed
            )
        return parts

    def encode(self, examples: list[fdata.Example]) -> dict[str, torch.Tensor]:
        """Tensors for the model's task: response-only LM labels, or one class label per row."""
        encoder = encode_classification if self.cfg.model.task == "seq-cls" else encode_lm
        return encoder(examples, self.tokenizer, max_length=self.cfg.data.max_length)

    @cached_property
    def eval_set(self) -> dict[str, torch.Tensor]:
        return self.encode(self.examples[1])

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """``eval_<name>`` for every metric of ``eval.metrics`` on the held-out set.

        Loss, accuracy and macro-F1 come from one pass over it; Rouge-L and exact match
        from text generated for its first ``eval.generate_examples`` prompts, whose time
        is reported on its own as ``eval_generate_seconds``.
        """
        e = self.cfg.eval
        scores: dict[str, float] = {}
        if {"loss", "accuracy", "macro_f1"} & set(e.metrics):
            computed = self.one_pass_scores(model, self.eval_set)
            scores.update({k: v for k, v in computed.items() if k.removeprefix("eval_") in e.metrics})
        if set(GENERATION_METRICS) & set(e.metrics):
            scores.update(self.generation_scores(model))
        return scores

    def one_pass_scores(self, model: torch.nn.Module, encoded: dict[str, torch.Tensor]) -> dict[str, float]:
        """``eval_loss``, ``eval_accuracy`` and, if ``eval.metrics`` has it, ``eval_macro_f1``
        of ``model`` on ``encoded``: what one forward pass over it gives."""
        e = self.cfg.eval
        with autocast(self.device, self.cfg.model.dtype):  # losses from float32 logits (evaluate)
            return evaluate(model, encoded, e.batch_size, self.device, macro_f1="macro_f1" in e.metrics,
                            progress_s=self.cfg.log.progress_s)

    def evaluate_local(
        self, model: torch.nn.Module, partition_id: int, num_partitions: int
    ) -> tuple[int, dict[str, float]]:
        """Federated evaluation on a client: ``model`` scored on the client's own held-out
        share (:meth:`local_split`). Returns (its number of examples, :meth:`one_pass_scores`);
        (0, {}) for a client with none."""
        def build() -> dict[str, torch.Tensor]:
            train = self.examples[0]
            return self.encode([train[i] for i in self.local_split(partition_id, num_partitions)[1]])

        if not self.local_split(partition_id, num_partitions)[1]:
            return 0, {}
        encoded = self._local_eval.get_or_build((partition_id, num_partitions), build)
        return int(encoded["input_ids"].shape[0]), self.one_pass_scores(model, encoded)

    def generation_scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Rouge-L and/or exact match (as ``eval.metrics`` asks) of generated responses,
        and ``eval_generate_seconds``."""
        from fedtune.generate import GenerationSettings, generate_texts, prompt_ids

        e, start = self.cfg.eval, time.monotonic()
        examples = self.examples[1][: e.generate_examples]
        settings = GenerationSettings(
            max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, do_sample=e.do_sample,
            temperature=e.temperature, seed=derive_seed(self.cfg.seed, "generate"),
            progress_s=self.cfg.log.progress_s,
        )
        prompts = prompt_ids(examples, self.tokenizer, self.cfg.data.max_length)
        texts = generate_texts(model, self.tokenizer, prompts, settings, self.device)
        references = [ex.response for ex in examples]
        scores = {}
        if "rougeL" in e.metrics:
            scores["eval_rougeL"] = rouge_l(texts, references)
        if "exact_match" in e.metrics:
            scores["eval_exact_match"] = exact_match(texts, references)
        scores["eval_generate_seconds"] = time.monotonic() - start
        return scores


def select_parameters(
    named: Sequence[tuple[str, torch.Tensor]], patterns: tuple[str, ...]
) -> list[tuple[str, torch.Tensor]]:
    """``named`` filtered by fnmatch ``patterns`` (empty: all).

    Raises:
        ValueError: naming a pattern that matches nothing, with example names.
    """
    from fnmatch import fnmatchcase

    if not patterns:
        return list(named)
    unmatched = [p for p in patterns if not any(fnmatchcase(n, p) for n, _ in named)]
    if unmatched:
        raise ValueError(
            f"`model.trainable` patterns {unmatched} match no tensor; names look like {[n for n, _ in named[:4]]}"
        )
    return [(n, t) for n, t in named if any(fnmatchcase(n, p) for p in patterns)]


def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Mean cross-entropy of a batch: over response tokens (causal LM) or rows (seq-cls),
    in float32 whatever the model's dtype (:func:`fedtune.dtypes.float32_loss`)."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    return float32_loss(model(**batch), batch["labels"])


def example_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Each row's cross-entropy, float32 ``(B,)`` (example-level DP, :mod:`fedtune.privacy.sample`):
    :func:`row_losses` of the batch's forward."""
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    labels = batch.pop("labels")
    return row_losses(model(**batch).logits, labels)


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's cross-entropy in float32, ``(B,)``: of its label (seq-cls, ``labels (B,)``),
    or the mean over its response tokens (causal LM, ``logits (B, T, V)``, ``labels (B, T)``,
    shifted as Hugging Face's loss shifts them; a row without one has loss 0). A seq-cls
    batch's :func:`batch_loss` is their mean; a causal-LM one weights rows by their tokens."""
    if labels.dim() == 1:
        return torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    tokens = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                               reduction="none")  # (B, T - 1), 0 where ignored
    return tokens.sum(dim=1) / (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, encoded: dict[str, torch.Tensor], batch_size: int, device: torch.device,
    *, macro_f1: bool = False, progress_s: float = 0.0,
) -> dict[str, float]:
    """Token-level loss and next-token accuracy over the response tokens of ``encoded``; for a
    classification set (``labels`` of shape ``(N,)``) the mean loss and argmax accuracy per row,
    and with ``macro_f1`` also the macro-F1 of the argmax (``eval_macro_f1``).

    ``progress_s`` > 0 logs ``evaluating: i/N examples`` that often while it runs.
    """
    num_examples = encoded["input_ids"].shape[0]
    progress = Progress("evaluating", num_examples, "examples", progress_s)
    if encoded["labels"].dim() == 1:
        return _evaluate_classification(model, encoded, batch_size, device, macro_f1, progress)
    total_loss, total_correct, total_tokens = 0.0, 0, 0
    for start in range(0, num_examples, batch_size):
        batch = {k: v[start : start + batch_size].to(device) for k, v in encoded.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        logits = logits[:, :-1].float()
        mask = labels != -100
        total_loss += float(
            torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum")
        )
        total_correct += int((logits.argmax(-1)[mask] == labels[mask]).sum())
        total_tokens += int(mask.sum())
        progress.advance(batch["input_ids"].shape[0])
    if total_tokens == 0:
        return {"eval_loss": math.nan, "eval_accuracy": math.nan}
    return {"eval_loss": total_loss / total_tokens, "eval_accuracy": total_correct / total_tokens}


def _evaluate_classification(
    model: torch.nn.Module, encoded: dict[str, torch.Tensor], batch_size: int, device: torch.device,
    macro_f1: bool, progress: Progress,
) -> dict[str, float]:
    total_loss, predictions = 0.0, []
    num_examples = encoded["input_ids"].shape[0]
    for start in range(0, num_examples, batch_size):
        batch = {k: v[start : start + batch_size].to(device) for k, v in encoded.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        total_loss += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
        predictions += logits.argmax(-1).tolist()
        progress.advance(batch["input_ids"].shape[0])
    labels = encoded["labels"].tolist()
    scores = {"eval_loss": total_loss / num_examples,
              "eval_accuracy": sum(p == y for p, y in zip(predictions, labels, strict=True)) / num_examples}
    if macro_f1:
        scores["eval_macro_f1"] = macro_f1_score(predictions, labels)
    return scores


BASE_DIR = "base"  # under a saved adapter: the base model it was trained on, when built from a config


def save_model(
    model: Any, directory: str | Path, tokenizer: Any = None, *, task: str = "causal-lm", base_model: Any = None
) -> None:
    """Save weights as safetensors in the Hugging Face layout, loadable without fedtune.

    ``model/`` gets ``config.json`` + ``model.safetensors`` (a PEFT model: its
    ``adapter_config.json`` + ``adapter_model.safetensors``) and the tokenizer: a Hugging
    Face one as it saves itself, fedtune's word tokenizer as a ``tokenizers``
    ``tokenizer.json`` (:mod:`fedtune.hf_tokenizer`), so ``AutoTokenizer.from_pretrained``
    loads either. ``base_model``, if given, is saved under ``base/`` for
    ``PeftModel.from_pretrained(AutoModel...from_pretrained(directory / "base"), directory)``.
    """
    from transformers.utils import logging as hf_logging

    from fedtune.hf_tokenizer import save_word_tokenizer

    hf_logging.disable_progress_bar()  # one shard of a small model: a bar is noise
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    if base_model is not None:
        base_model.save_pretrained(directory / BASE_DIR, safe_serialization=True)
    if isinstance(tokenizer, fdata.WordTokenizer):
        save_word_tokenizer(tokenizer, directory, task)
    elif tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(directory)
