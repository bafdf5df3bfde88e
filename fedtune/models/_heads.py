"""Classification heads that start from what a pretrained model already knows.

A freshly initialised classification head starts at chance, and a zeroth-order optimizer,
whose rate degrades with the number of directions it has to search, rarely climbs out of
it: MeZO (Malladi et al. 2023, https://arxiv.org/abs/2305.17333, sec. 3 and table 3) reaches
fine-tuning quality only when the task is phrased so that the pretrained model already
scores the labels. These heads are that phrasing, built from the label names:

- :class:`LabelNameClassifier`, for sentence encoders: the mean-pooled, L2-normalised
  sentence embedding (the way all-MiniLM-L6-v2 and other sentence-transformers are
  trained), times a linear head whose rows start as the normalised embeddings of the
  label names, scaled. Before any training its argmax is the zero-shot "nearest label
  name by cosine" classifier.
- :class:`VerbalizerClassifier`, for causal LMs: the LM head's logits at the last real
  token, restricted to the first token of each label name (`` world``, `` sports``, ...):
  MeZO's prompt-based classification.

Both return Hugging Face's ``SequenceClassifierOutput`` (``.loss`` with ``labels``,
``.logits`` of shape ``(B, num_labels)``), so training, evaluation and PEFT treat them like
any ``AutoModelForSequenceClassification``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["HEAD_FILE", "LabelNameClassifier", "VerbalizerClassifier", "is_causal_lm_config"]

HEAD_FILE = "fedtune_head.json"  # beside a saved model: which head, and its label names
HEAD_WEIGHTS = "classifier.safetensors"  # beside a saved encoder: the label-name head's weights

# Initial head weights are rounded to float16's 11-bit mantissa: the label-name embeddings are
# computed by every party on its own CPU, and a last-bit difference between two CPUs' kernels
# would otherwise give two parties different starting weights (and every digest would differ).
_INIT_DTYPE = torch.float16


def is_causal_lm_config(config: Any) -> bool:
    """Whether a Hugging Face config describes a decoder-only LM (else: an encoder)."""
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return True
    if architectures:
        return False
    # fedtune's named configs carry no `architectures`; every one of them is a decoder.
    return getattr(config, "model_type", "") in {"llama", "opt", "gpt2", "mistral", "qwen2", "gemma", "phi"}


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' states: ``(B, T, H), (B, T) -> (B, H)``."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _output(logits: torch.Tensor, labels: torch.Tensor | None) -> Any:
    from transformers.modeling_outputs import SequenceClassifierOutput

    loss = None
    if labels is not None:
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
    return SequenceClassifierOutput(loss=loss, logits=logits)


def _check_names(label_names: Sequence[str]) -> list[str]:
    names = list(label_names)
    if len(names) < 2 or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"`label_names` must be >= 2 non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"`label_names` must be distinct, got {names!r}")
    return names


class LabelNameClassifier(torch.nn.Module):
    """A sentence encoder with a cosine head initialised from the label names' embeddings.

    ``logits = classifier(normalize(mean_pool(encoder(x))))``; the classifier's row ``c``
    starts as ``scale * normalize(mean_pool(encoder(label_names[c])))`` and its bias at 0,
    so the untrained model is the zero-shot classifier.

    Args:
        encoder: a Hugging Face encoder (``AutoModel``: BERT, MiniLM, RoBERTa, ...).
        tokenizer: its tokenizer, to embed the label names.
        label_names: one natural-language name per class, in label order.
        scale: the logits' scale (an inverse temperature); 20 puts the zero-shot cosine
            gaps of a sentence encoder (~0.1) at a few nats.
    """

    def __init__(self, encoder: Any, tokenizer: Any, label_names: Sequence[str], scale: float = 20.0) -> None:
        super().__init__()
        self._attach(encoder, _check_names(label_names))
        with torch.inference_mode():
            encoded = _encode_names(tokenizer, self.label_names)
            device = next(encoder.parameters()).device
            embedding = self.features(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))
            weight = (scale * embedding).to(_INIT_DTYPE).float()
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.zero_()

    def _attach(self, encoder: Any, names: list[str]) -> None:
        """The encoder, its config (``num_labels`` set), the label names and an untrained head."""
        self.encoder = encoder
        self.config = encoder.config
        self.config.num_labels = len(names)
        self.label_names = names
        self.classifier = torch.nn.Linear(int(self.config.hidden_size), len(names))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,  # PEFT passes output_attentions, return_dict, ... through
    ) -> Any:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.classify(self.features(input_ids, attention_mask), labels)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's part: the normalised mean-pooled sentence embeddings, ``(B, H)``."""
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.nn.functional.normalize(_mean_pool(states, attention_mask), dim=-1)

    def classify(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        """The head's part: logits (and the loss with ``labels``) from :meth:`features`' output.

        ``forward`` is ``classify(features(...))``; a caller whose encoder is frozen may
        compute the features once and train the head on them alone.
        """
        return _output(self.classifier(features), labels)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **kwargs: Any) -> LabelNameClassifier:
        """The classifier :meth:`save_pretrained` wrote (a run's ``model/``), with transformers
        and safetensors alone: the encoder by ``AutoModel``, the head's trained weights from
        ``classifier.safetensors``, the label names from ``fedtune_head.json``.

        Raises:
            FileNotFoundError: if ``directory`` lacks the head's files.
        """
        from safetensors.torch import load_file
        from transformers import AutoModel

        directory = Path(directory)
        names = _read_head_file(directory)
        state = load_file(str(_need(directory / HEAD_WEIGHTS)))
        encoder = AutoModel.from_pretrained(directory, **kwargs)
        model = cls.__new__(cls)  # not __init__: the head is loaded, not computed from the names
        torch.nn.Module.__init__(model)
        model._attach(encoder, names)
        model.classifier.load_state_dict(state)
        return model.to(next(encoder.parameters()).device).eval()

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """The encoder in the Hugging Face layout, the head in ``classifier.safetensors``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.encoder.save_pretrained(directory, **kwargs)
        head = {k: v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}
        save_file(head, str(directory / HEAD_WEIGHTS))
        _write_head_file(directory, self.label_names)


class VerbalizerClassifier(torch.nn.Module):
    """A causal LM scored on label words: logits = LM logits at the last real token, per label.

    Label ``c``'s logit is the LM head's logit for the first token of ``" " + label_names[c]``
    at the last non-padding position (padding may be on either side).

    Args:
        lm: a Hugging Face causal LM.
        tokenizer: its tokenizer (Hugging Face or fedtune's word tokenizer).
        label_names: one name per class; their first tokens must differ.

    Raises:
        ValueError: if two label names start with the same token, or a name maps to the
            unknown token.
    """

    def __init__(self, lm: Any, tokenizer: Any, label_names: Sequence[str]) -> None:
        super().__init__()
        names = _check_names(label_names)
        self.lm = lm
        self.config = lm.config
        self.config.num_labels = len(names)
        self.label_names = names
        first = [_first_token(tokenizer, name) for name in names]
        unk = getattr(tokenizer, "unk_token_id", None)
        bad = [n for n, t in zip(names, first) if t is None or (unk is not None and t == unk)]
        if bad:
            raise ValueError(f"label names {bad} have no token of their own in the model's vocabulary")
        if len(set(first)) != len(first):
            raise ValueError(
                f"label names {names} must start with distinct tokens to be scored by the LM head; got token ids {first}"
            )
        self.register_buffer("label_token_ids", torch.tensor(first, dtype=torch.long), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> Any:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        # The last real token: right padding -> its index; left padding -> T - 1.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last = (attention_mask * positions).argmax(dim=1)  # (B,)
        rows = logits[torch.arange(input_ids.shape[0], device=input_ids.device), last]  # (B, V)
        return _output(rows[:, self.label_token_ids], labels)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **kwargs: Any) -> VerbalizerClassifier:
        """The classifier :meth:`save_pretrained` wrote (a run's ``model/``): the LM by
        ``AutoModelForCausalLM``, its tokenizer by ``AutoTokenizer`` (saved beside it), the
        label names from ``fedtune_head.json``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = Path(directory)
        names = _read_head_file(directory)
        lm = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
        return cls(lm, AutoTokenizer.from_pretrained(directory), names).eval()

    def save_pretrained(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:
        directory = Path(directory)
        self.lm.save_pretrained(directory, **kwargs)
        _write_head_file(directory, self.label_names)


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: not a model fedtune saved with a label-name head")
    return path


def _read_head_file(directory: Path) -> list[str]:
    """The label names of ``fedtune_head.json``."""
    data = json.loads(_need(directory / HEAD_FILE).read_text(encoding="utf-8"))
    return _check_names(data["label_names"])


def _write_head_file(directory: Path, label_names: list[str]) -> None:
    """``fedtune_head.json``: which head a saved model has, and its label names."""
    text = json.dumps({"head": "label-names", "label_names": label_names}, indent=2) + "\n"
    (directory / HEAD_FILE).write_text(text, encoding="utf-8")


def _encode_names(tokenizer: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of the names, as the task's sentences are encoded."""
    from fedtune.data import Example
    from fedtune.data.batches import encode_classification

    examples = [Example(prompt=name, response="", label=0) for name in names]
    return encode_classification(examples, tokenizer, max_length=max(8, 4 * max(len(n.split()) for n in names)))


def _first_token(tokenizer: Any, name: str) -> int | None:
    """The id of the first token of ``" " + name`` (no special tokens)."""
    from fedtune.data.tokenizer import WordTokenizer

    if isinstance(tokenizer, WordTokenizer):
        ids = tokenizer.encode(name.split()[0])
    else:
        ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) else None
