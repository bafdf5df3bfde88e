"""A seq-cls model cut after block ``layer``, with a soft prompt in front of the tokens.

The client's part (:meth:`SplitModel.bottom`) is the token embeddings, the soft prompt
(``P`` trainable vectors prepended to the token embeddings, the attention mask extended by
``P`` ones), the model's own embedding post-processing (BERT: positions, token types,
LayerNorm) and blocks ``0 .. layer-1``. The server's part (:meth:`SplitModel.top`) is blocks
``layer ..`` and the head. Both run the Hugging Face backbone's own ``forward`` (its masks,
positions and rotary embeddings), cut by hooks: the client's stops after block
``layer - 1``; the server's swaps blocks ``0 .. layer-1`` for a module that hands on the
received activations. So the split forward is the unsplit one (:meth:`SplitModel.full`,
the backbone called once on ``[prompt; token embeddings]``) by construction, and
``tests/test_split_prompt.py`` checks it.

The head reads the backbone's last hidden states at the *tokens'* positions, so the prompt
acts through attention alone: the label-name head mean-pools the real tokens (not the
prompt's positions), BERT's pooler reads ``[CLS]`` (at position ``P``), a decoder's head
reads the last real token. Supported: :class:`fedtune.models.LabelNameClassifier`
(encoders: MiniLM, micro-bert), :class:`fedtune.models.VerbalizerClassifier` (decoders),
and Hugging Face's ``BertForSequenceClassification`` / ``LlamaForSequenceClassification``
(the ``default`` head).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fedtune.emulator import block_stack

__all__ = ["PROMPT_FILE", "PromptedClassifier", "SplitModel", "el2n_scores", "extend_mask", "num_blocks", "save_prompt", "supported"]

_HEADS = ("LabelNameClassifier", "VerbalizerClassifier", "BertForSequenceClassification",
          "LlamaForSequenceClassification")


def supported(model: torch.nn.Module) -> str:
    """Why ``model`` cannot be split ("" if it can): the classes the split knows the head of."""
    name = type(model).__name__
    if name in _HEADS:
        return ""
    return (f"split-prompt supports seq-cls models with the heads {', '.join(_HEADS)}; "
            f"this config builds {name}")


def _backbone(model: Any) -> Any:
    """The module whose ``forward(inputs_embeds=..., attention_mask=...)`` runs the block stack."""
    name = type(model).__name__
    if name == "LabelNameClassifier":
        return model.encoder
    if name == "VerbalizerClassifier":
        return model.lm.model
    if name == "BertForSequenceClassification":
        return model.bert
    if name == "LlamaForSequenceClassification":
        return model.model
    raise ValueError(supported(model))


def num_blocks(model: torch.nn.Module) -> int:
    """Transformer blocks of ``model``'s stack (the split point is in ``[1, num_blocks - 1]``)."""
    return len(block_stack(_backbone(model))[1])


class _Cut(Exception):  # control flow, not an error
    """Raised by the hook after the client's last block: carries its output, ends the forward."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


class _Handover(torch.nn.Module):
    """Stands in for a client block on the server: returns the received activations."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.hidden


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class SplitModel:
    """A frozen seq-cls ``model`` cut after block ``layer``, prompted by ``(P, H)`` vectors.

    Args:
        model: a model :func:`supported` accepts (eval mode: no dropout, deterministic).
        layer: the client runs blocks ``0 .. layer-1``, in ``[1, num_blocks - 1]``.

    Raises:
        ValueError: on an unsupported model or a layer outside the range.
    """

    def __init__(self, model: torch.nn.Module, layer: int) -> None:
        if why := supported(model):
            raise ValueError(why)
        self.model: Any = model  # Hugging Face modules: their submodules typed Any
        self.backbone: Any = _backbone(model)
        _, self.blocks = block_stack(self.backbone)
        if not 1 <= layer <= len(self.blocks) - 1:
            raise ValueError(f"`split.layer` must be in [1, {len(self.blocks) - 1}] (the model has "
                             f"{len(self.blocks)} blocks), got {layer}")
        self.layer = layer
        self.embeddings: torch.nn.Embedding = self.backbone.get_input_embeddings()
        for p in model.parameters():
            p.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self.embeddings.weight.shape[1])

    def _inputs(self, prompt: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[prompt; token embeddings]`` ``(B, P+T, H)`` and the mask with ``P`` leading ones."""
        tokens = self.embeddings(input_ids)
        batch = input_ids.shape[0]
        embeds = torch.cat([prompt.to(tokens.dtype).unsqueeze(0).expand(batch, -1, -1), tokens], dim=1)
        return embeds, extend_mask(attention_mask, prompt.shape[0])

    def bottom(self, prompt: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The client's forward: block ``layer - 1``'s output, ``(B, P+T, H)`` (differentiable in ``prompt``)."""
        embeds, mask = self._inputs(prompt, input_ids, attention_mask)

        def stop(module: torch.nn.Module, args: Any, output: Any) -> None:
            raise _Cut(_first(output))

        handle = self.blocks[self.layer - 1].register_forward_hook(stop)
        try:
            self.backbone(inputs_embeds=embeds, attention_mask=mask)
        except _Cut as cut:
            return cut.hidden
        finally:
            handle.remove()
        raise RuntimeError(f"the backbone's forward never ran block {self.layer - 1}")

    @contextmanager
    def _handed_over(self, hidden: torch.Tensor) -> Iterator[None]:
        """Blocks ``0 .. layer-1`` replaced by the client's activations, for one forward."""
        kept = [self.blocks[i] for i in range(self.layer)]
        try:
            for i in range(self.layer):
                self.blocks[i] = _Handover(hidden)
            yield
        finally:
            for i, block in enumerate(kept):
                self.blocks[i] = block

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The server's forward from the client's activations ``hidden`` ``(B, P+T, H)`` and the
        tokens' mask ``(B, T)``: logits ``(B, C)``, differentiable in ``hidden``."""
        prompt_length = hidden.shape[1] - attention_mask.shape[1]
        mask = extend_mask(attention_mask, prompt_length)
        placeholder = torch.zeros_like(hidden, requires_grad=False)  # the embedding pass's output is dropped
        with self._handed_over(hidden):
            states = self.backbone(inputs_embeds=placeholder, attention_mask=mask).last_hidden_state
        return self.head(states, mask, prompt_length)

    def full(self, prompt: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The unsplit forward: the backbone once on ``[prompt; tokens]``, then the head. Logits ``(B, C)``."""
        embeds, mask = self._inputs(prompt, input_ids, attention_mask)
        states = self.backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        return self.head(states, mask, prompt.shape[0])

    def local_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """SFPrompt's local path: the head applied to the split activations themselves, the
        server's blocks skipped (a decoder's final norm applied first, as its head expects).
        Logits ``(B, C)``: the local loss and the EL2N pruning score, no server round trip."""
        prompt_length = hidden.shape[1] - attention_mask.shape[1]
        norm = getattr(self.backbone, "norm", None)
        states = norm(hidden) if norm is not None else hidden
        return self.head(states, extend_mask(attention_mask, prompt_length), prompt_length)

    def head(self, states: torch.Tensor, mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """Logits ``(B, C)`` from last hidden states ``(B, P+T, H)`` read at the tokens' positions."""
        m, name = self.model, type(self.model).__name__
        if name == "LabelNameClassifier":
            tokens, real = states[:, prompt_length:], mask[:, prompt_length:].unsqueeze(-1).to(states.dtype)
            pooled = (tokens * real).sum(1) / real.sum(1).clamp(min=1.0)
            return m.classifier(torch.nn.functional.normalize(pooled, dim=-1))
        if name == "BertForSequenceClassification":
            pooled = self.backbone.pooler(states[:, prompt_length:])  # [CLS] is the first token after the prompt
            return m.classifier(m.dropout(pooled))
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)  # the last real token (right padding)
        rows = states[torch.arange(states.shape[0], device=states.device), last]  # (B, H)
        if name == "VerbalizerClassifier":
            return m.lm.lm_head(rows)[:, m.label_token_ids]
        return m.score(rows)


def extend_mask(attention_mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """``(B, T)`` -> ``(B, P+T)``: the prompt's positions are always attended."""
    ones = torch.ones(attention_mask.shape[0], prompt_length, dtype=attention_mask.dtype, device=attention_mask.device)
    return torch.cat([ones, attention_mask], dim=1)


def el2n_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """EL2N (Paul et al. 2021, https://arxiv.org/abs/2107.07075): ``||softmax(logits) - onehot(y)||_2``
    per row, ``(B,)`` float32; high = hard to fit."""
    probs = torch.softmax(logits.float(), dim=-1)
    onehot = torch.nn.functional.one_hot(labels, probs.shape[-1]).float()
    return (probs - onehot).norm(dim=-1)


class PromptedClassifier(torch.nn.Module):
    """The whole model with a fixed prompt, as Hugging Face classifiers are called: what the
    server evaluates (:meth:`fedtune.workload.Workload.evaluate`) and saves.

    Args:
        split: the split model (its :meth:`SplitModel.full` is the forward).
        prompt: ``(P, H)`` float32.
    """

    def __init__(self, split: SplitModel, prompt: torch.Tensor) -> None:
        super().__init__()
        self.split = split
        self.register_buffer("prompt", prompt.detach().clone())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **_: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.split.full(self.get_buffer("prompt"), input_ids, attention_mask)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


PROMPT_FILE = "prompt.safetensors"  # a run's model/: {"prompt": (P, H) float32}


def save_prompt(prompt: torch.Tensor, directory: str | Path) -> Path:
    """Write the trained prompt as ``<directory>/prompt.safetensors`` (``{"prompt": (P, H)}``);
    returns the file. The frozen model it prompts is the run's ``model`` config."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / PROMPT_FILE
    save_file({"prompt": prompt.detach().float().cpu().contiguous()}, str(path))
    return path
