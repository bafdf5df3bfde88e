"""Prompt templates: how a dataset row's columns become an :class:`~fedtune.data.tasks.Example`.

A template names the *roles* it reads (``instruction``, ``output``, ...) and renders a row's
values for them into a prompt and a response; ``data.fields`` maps a role to the column that
holds it when the names differ. The loss falls on the response only
(:func:`fedtune.data.arrays.encode_lm`).

- ``plain``: ``prompt`` and ``response`` as they are, joined by a space.
- ``alpaca``: Stanford Alpaca's prompt over ``instruction``, ``input`` (optional) and
  ``output`` (https://github.com/tatsu-lab/stanford_alpaca, ``PROMPT_DICT``).
- ``dolly``: Databricks Dolly's training prompt over ``instruction``, ``context``
  (optional) and ``response``; ``category`` is the default label and natural partition
  (https://github.com/databrickslabs/dolly, ``training/consts.py``).
- ``chat``: the tokenizer's own chat template (``apply_chat_template``) over ``prompt``
  (the user turn) and ``response`` (the assistant turn), for chat models.

Every template also reads an optional ``label`` role (default column: ``label``; for
``dolly``, ``category``). Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TEMPLATES", "Template", "get_template"]

_ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_DOLLY_INTRO = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class Template:
    """A named prompt format.

    Attributes:
        name: the ``data.template`` value.
        required: roles every row must have a column for.
        optional: roles read when their column exists (an absent one reads as ``""``).
        default_label: the role whose column is the label when ``data.fields`` maps none.
        response_role: the role holding the response text (an empty one is skipped).
        sep: what joins prompt and response (:attr:`Example.sep`).
        render: ``(values by role) -> (prompt, response)``; ``chat`` renders with a tokenizer.
    """

    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    default_label: str
    response_role: str
    sep: str
    render: Callable[[Mapping[str, str]], tuple[str, str]] | None

    @property
    def roles(self) -> tuple[str, ...]:
        """Every role ``data.fields`` may map for this template (``label`` included)."""
        return self.required + self.optional + (() if "label" in self.optional else ("label",))


def _plain(row: Mapping[str, str]) -> tuple[str, str]:
    return row["prompt"], row["response"]


def _alpaca(row: Mapping[str, str]) -> tuple[str, str]:
    fmt = _ALPACA_WITH_INPUT if row["input"].strip() else _ALPACA_NO_INPUT
    return fmt.format(instruction=row["instruction"], input=row["input"]), row["output"]


def _dolly(row: Mapping[str, str]) -> tuple[str, str]:
    parts = [_DOLLY_INTRO, f"### Instruction:\n{row['instruction']}"]
    if row["context"].strip():
        parts.append(f"Input:\n{row['context']}")
    parts.append("### Response:\n")
    return "\n\n".join(parts), row["response"]


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("plain", ("prompt", "response"), ("label",), "label", "response", " ", _plain),
        Template("alpaca", ("instruction", "output"), ("input", "label"), "label", "output", "", _alpaca),
        Template("dolly", ("instruction", "response"), ("context", "category"), "category", "response", "", _dolly),
        Template("chat", ("prompt", "response"), ("label",), "label", "response", "", None),
    )
}
"""The built-in templates, by ``data.template`` name."""


def get_template(name: str) -> Template:
    """The template ``name``.

    Raises:
        ValueError: naming the built-in templates, for an unknown name.
    """
    if name not in TEMPLATES:
        raise ValueError(f"`data.template` must be one of {', '.join(TEMPLATES)}, got {name!r}")
    return TEMPLATES[name]


def chat_renderer(tokenizer: Any) -> Callable[[Mapping[str, str]], tuple[str, str]]:
    """``render`` for the ``chat`` template: the tokenizer's own chat format.

    The prompt is the user turn plus the generation prompt (the assistant header); the
    response is what the full two-turn conversation adds after it (the assistant's text and
    its end-of-turn marker). A leading bos is dropped from the prompt, since
    :func:`~fedtune.data.arrays.encode_lm` adds the tokenizer's bos itself.

    Raises:
        ValueError: if the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None) or not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError(
            f"`data.template` = 'chat' but the tokenizer ({type(tokenizer).__name__}) has no chat template; "
            "use a chat model's `model.path` or another template (plain, alpaca, dolly)"
        )
    bos = getattr(tokenizer, "bos_token", None) or ""

    def render(row: Mapping[str, str]) -> tuple[str, str]:
        user = [{"role": "user", "content": row["prompt"]}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": row["response"]}], tokenize=False
        )
        # a template that rewrites earlier turns: the assistant text alone is the response
        response = full[len(prompt):] if full.startswith(prompt) else row["response"]
        if bos and prompt.startswith(bos):
            prompt = prompt[len(bos):]
        return prompt, response

    return render
