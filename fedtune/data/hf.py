"""Read local datasets in the formats users have, with Hugging Face ``datasets``, into examples.

``data.source = "file"``: ``data.path`` is a directory written by ``Dataset.save_to_disk``
(or ``DatasetDict.save_to_disk``: ``data.split`` picks the split), a ``.parquet`` file, a
``.json``/``.jsonl`` file or a ``.csv`` file. Local paths only: a path that does not exist
is an error (never a hub id), and the ``datasets`` library runs offline.

Rows become :class:`~fedtune.data.tasks.Example` through a prompt template
(:mod:`fedtune.data.templates`) and ``data.fields`` (template role -> column). Labels are
ints or strings, as in :mod:`fedtune.data.files`: strings map to ``0, 1, ...`` in sorted
order of the distinct strings of every file read together, and name the classes.

CSV cells are read as strings, exactly as written (no type inference, empty stays empty);
a label column whose cells are all decimal integers is read as ints, as
:func:`fedtune.data.load_csv` does. Torch-free; ``datasets`` is imported on first use.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tasks import TASK_TYPES, Example, generate_instructions
from .templates import Template, chat_renderer, get_template

__all__ = ["FORMATS", "LoadedRows", "infer_format", "load_examples", "read_dataset", "write_dolly"]

logger = logging.getLogger(__name__)

FORMATS: dict[str, str] = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
"""File suffix -> the ``datasets`` reader; a directory is read with ``load_from_disk``."""


@dataclass(frozen=True)
class LoadedRows:
    """The examples of one file, in row order, and each row's ``data.partition_field`` value."""

    examples: list[Example]
    values: list[str]  # one per example; all "" when no partition field is read


def _datasets() -> Any:
    """The ``datasets`` module, offline: a local path is all fedtune ever reads."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    datasets.config.HF_DATASETS_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    return datasets


def infer_format(path: str | os.PathLike[str]) -> str:
    """``disk`` for a directory, else the reader of the file's suffix (:data:`FORMATS`).

    Raises:
        FileNotFoundError: if ``path`` does not exist (fedtune never reads a hub id).
        ValueError: for a file with another suffix.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(
            f"data path {str(file)!r} does not exist (fedtune reads local paths only, never a hub id)"
        )
    if file.is_dir():
        return "disk"
    suffix = file.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"data path {str(file)!r}: unknown format {suffix or '(no suffix)'!r}; give a save_to_disk "
            f"directory or a file ending in {', '.join(FORMATS)}"
        )
    return FORMATS[suffix]


def read_dataset(path: str | os.PathLike[str], split: str = "train") -> Any:
    """The rows of a local dataset as a ``datasets.Dataset`` (in memory, nothing cached on disk).

    Args:
        path: a ``save_to_disk`` directory or a parquet / JSON / JSON Lines / CSV file.
        split: the split of a ``DatasetDict`` directory; a single dataset's one split is ``train``.

    Raises:
        FileNotFoundError: if ``path`` does not exist or is a directory ``save_to_disk`` did
            not write.
        ValueError: on an unknown suffix or a split the dataset lacks.
    """
    kind = infer_format(path)
    datasets = _datasets()
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        if kind == "disk":
            try:
                loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"data path {str(path)!r} is a directory but not one written by save_to_disk "
                    "(a Dataset or DatasetDict); give a file, or save the dataset with save_to_disk"
                ) from None
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(
                        f"`data.split` = {split!r} but {str(path)!r} holds splits {sorted(loaded)}; "
                        "set data.split to one of them"
                    )
                return loaded[split]
        if split != "train":
            raise ValueError(
                f"`data.split` = {split!r} but {str(path)!r} is a single dataset (its one split is 'train'); "
                "remove data.split, or give a DatasetDict directory that has that split"
            )
        if kind == "disk":
            return loaded
        # The packaged readers build through a cache directory: a throwaway one, in memory after.
        with tempfile.TemporaryDirectory(prefix="fedtune-datasets-") as cache:
            if kind == "csv":  # every column a string, as written: no inference, no NaN for ""
                strings = datasets.Features({name: datasets.Value("string") for name in _csv_header(path)})
                return datasets.Dataset.from_csv(
                    str(path), cache_dir=cache, keep_in_memory=True, features=strings, keep_default_na=False
                )
            reader = datasets.Dataset.from_parquet if kind == "parquet" else datasets.Dataset.from_json
            return reader(str(path), cache_dir=cache, keep_in_memory=True)
    finally:
        if bars:
            datasets.enable_progress_bars()


def _csv_header(path: str | os.PathLike[str]) -> list[str]:
    """The column names of a CSV file's header row.

    Raises:
        ValueError: for an empty file.
    """
    with open(path, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ValueError(f"data path {str(path)!r}: empty CSV file, expected a header row")
    return header


def _text(value: object) -> str:
    """A text cell: a missing one (None) reads as empty, a number as its decimal text."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _resolve_columns(
    template: Template, fields: Mapping[str, str], columns: Sequence[str], where: str, *, seq_cls: bool
) -> dict[str, str | None]:
    """Role -> column (None: absent, reads as ``""``), checked against the dataset's columns."""
    for role, column in fields.items():
        if column not in columns:
            raise ValueError(
                f"`data.fields.{role}` = {column!r} but {where} has no column {column!r} "
                f"(columns: {', '.join(columns)}); map {role} to one of them"
            )
    required = [r for r in template.required if not (seq_cls and r == template.response_role)]
    resolved: dict[str, str | None] = {}
    for role in template.required + template.optional:
        column = fields.get(role, role)
        if column in columns:
            resolved[role] = column
        elif role in required:
            raise ValueError(
                f"`data.template` = {template.name!r} needs a {role!r} column but {where} has only "
                f"{', '.join(columns)}; map one with data.fields = {{{role} = \"<column>\"}} or choose "
                "another data.template"
            )
        else:
            resolved[role] = None
    label = fields.get("label", fields.get(template.default_label, template.default_label))
    resolved["label"] = label if label in columns else None
    return resolved


def _labels(cells: list[Any], where: str, column: str, *, from_csv: bool) -> list[int] | list[str]:
    """A label column as ints or strings (CSV cells that are all decimal digits: ints)."""
    if from_csv and all(isinstance(c, str) and c.isascii() and c.isdigit() for c in cells):
        return [int(c) for c in cells]
    for row, cell in enumerate(cells):
        if isinstance(cell, bool) or not isinstance(cell, (int, str)):
            raise ValueError(  # noqa: TRY004 (bad file content, as in fedtune.data.files)
                f"{where} row {row}: label column {column!r} must hold ints or strings, got "
                f"{type(cell).__name__} {cell!r}; fix the data or map another column with data.fields.label"
            )
        if isinstance(cell, int) and cell < 0:
            raise ValueError(f"{where} row {row}: label column {column!r} must be >= 0, got {cell}")
    ints = [row for row, cell in enumerate(cells) if isinstance(cell, int)]
    strs = [row for row, cell in enumerate(cells) if isinstance(cell, str)]
    if ints and strs:
        raise ValueError(
            f"{where}: label column {column!r} mixes ints (row {ints[0]}) and strings (row {strs[0]}); use one kind"
        )
    return [int(c) for c in cells] if ints else [str(c) for c in cells]


def load_examples(
    sources: Sequence[tuple[str, str]],
    *,
    template: str = "plain",
    fields: Mapping[str, str] | None = None,
    partition_field: str = "",
    tokenizer: Any = None,
    seq_cls: bool = False,
) -> tuple[list[LoadedRows], tuple[str, ...]]:
    """Read each ``(path, split)`` of ``sources`` into examples, with one label mapping for all.

    Args:
        sources: the local datasets to read (e.g. the training data and a held-out file).
        template: a built-in template name (:data:`fedtune.data.templates.TEMPLATES`).
        fields: template role -> column name, where they differ.
        partition_field: a column whose value (as text) each row also returns, or "".
        tokenizer: the Hugging Face tokenizer whose chat template ``chat`` renders with.
        seq_cls: classification data: the response column may be absent.

    Returns:
        One :class:`LoadedRows` per source, and the class names when the labels are
        strings (sorted; label ``i`` is name ``i``), else ``()``. Rows without a label
        column get label 0.

    Raises:
        FileNotFoundError, ValueError: naming the ``data.*`` key, what was found and the fix.
    """
    spec = get_template(template)
    fields = dict(fields or {})
    unknown = sorted(set(fields) - set(spec.roles))
    if unknown:
        raise ValueError(
            f"`data.fields` maps {', '.join(unknown)}, not a role of data.template = {template!r}; "
            f"its roles: {', '.join(spec.roles)}"
        )
    render = chat_renderer(tokenizer) if template == "chat" else spec.render
    assert render is not None
    tables = []
    for path, split in sources:
        dataset = read_dataset(path, split)
        where = repr(str(path)) + (f" (split {split!r})" if infer_format(path) == "disk" else "")
        columns = list(dataset.column_names)
        if dataset.num_rows == 0:
            raise ValueError(f"{where} holds no rows; give a dataset with examples")
        resolved = _resolve_columns(spec, fields, columns, where, seq_cls=seq_cls)
        if partition_field and partition_field not in columns:
            raise ValueError(
                f"`data.partition_field` = {partition_field!r} but {where} has no such column "
                f"(columns: {', '.join(columns)}); name one of them"
            )
        wanted = sorted({c for c in resolved.values() if c is not None} | ({partition_field} - {""}))
        tables.append((where, resolved, dataset.select_columns(wanted).to_dict(), infer_format(path) == "csv"))
    raw_labels: list[list[int] | list[str]] = []
    for where, resolved, table, from_csv in tables:
        column = resolved["label"]
        num_rows = len(next(iter(table.values())))
        raw_labels.append(_labels(table[column], where, column, from_csv=from_csv) if column else [0] * num_rows)
    kinds = {type(labels[0]) for labels in raw_labels}
    if len(kinds) > 1:
        raise ValueError(f"the label columns of {', '.join(t[0] for t in tables)} mix ints and strings; use one kind")
    names: tuple[str, ...] = ()
    if str in kinds:
        names = tuple(sorted({str(label) for labels in raw_labels for label in labels}))
        ids = {name: i for i, name in enumerate(names)}
        logger.info("mapped %d string labels to class ids: %s", len(ids), ids)
        raw_labels = [[ids[str(label)] for label in labels] for labels in raw_labels]
    loaded = []
    for (_, resolved, table, _), labels in zip(tables, raw_labels, strict=True):
        num_rows = len(labels)
        by_role = {role: table[col] if col else [""] * num_rows for role, col in resolved.items() if role != "label"}
        examples = []
        for i in range(num_rows):
            prompt, response = render({role: _text(cells[i]) for role, cells in by_role.items()})
            if not _text(by_role[spec.response_role][i]).strip():
                response = ""  # nothing to learn: dropped as an empty response, whatever the template adds
            examples.append(Example(prompt=prompt, response=response, label=int(labels[i]), sep=spec.sep))
        values = [_text(v) for v in table[partition_field]] if partition_field else [""] * num_rows
        loaded.append(LoadedRows(examples, values))
    return loaded, names


def write_dolly(directory: str | os.PathLike[str], num_examples: int = 1000, seed: int = 0) -> Path:
    """Write fedtune's generated instruction task in the Dolly format with ``save_to_disk``.

    Columns ``instruction`` (the task type, e.g. ``reverse``), ``context`` (the input
    symbols), ``response`` (the answer) and ``category`` (the task type: the ``dolly``
    template's label and natural partition field). The rows are those of
    :func:`fedtune.data.generate_instructions` for ``seed``.

    Args:
        directory: where to write; must not exist yet or be empty.
        num_examples: rows to write, >= 1.
        seed: the generator's seed.

    Returns:
        ``directory``, readable with ``datasets.load_from_disk`` and ``data.source = "file"``.

    Raises:
        FileExistsError: if ``directory`` holds files already.
    """
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} exists and is not an empty directory; pick a new one")
    columns: dict[str, list[str]] = {"instruction": [], "context": [], "response": [], "category": []}
    for example in generate_instructions(num_examples, seed):
        task = TASK_TYPES[example.label]
        columns["instruction"].append(task)
        columns["context"].append(example.prompt.removeprefix(f"{task} : ").removesuffix(" =>"))
        columns["response"].append(example.response)
        columns["category"].append(task)
    datasets = _datasets()
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_dict(columns).save_to_disk(str(out))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return out
