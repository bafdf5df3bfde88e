"""Real text that fedtune did not generate: Debian's ``fortunes`` collection as a classification task.

The quality bench's generated tasks (``topics``, ``news``) were designed here, so a result on
them alone could be an artefact of their design. This module turns the fortune cookie files
of the Debian package ``fortunes`` (``apt-get install fortunes``: written by people, decades
old, noisy: quotes, jokes, poems, definitions) into a labelled dataset: the label is the file a
fortune came from. Nothing is downloaded at run time; the files are read from
``/usr/share/games/fortunes``.

The categories were chosen once, before any run, as the largest files whose name is a topic
(each holds >= 580 fortunes): ``computers``, ``men-women``, ``politics``, ``science``,
``songs-poems`` and ``work``; their label names are the file names with ``-`` read as "and".
Each class keeps ``per_class`` fortunes (seeded draw), ``eval_examples`` of them are held
out (stratified), and both splits are written with Hugging Face ``datasets``:

    python bench/real_text.py data/fortunes        # data/fortunes/{train,eval}.parquet

and read by ``data.source = "file"`` (columns ``prompt`` and ``label``)::

    fedtune run simulations/quality.toml --set data.source=file \
        --set data.path=data/fortunes/train.parquet --set data.eval_path=data/fortunes/eval.parquet
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
CATEGORIES = ("computers", "men-women", "politics", "science", "songs-poems", "work")


def read_fortunes(path: Path) -> list[str]:
    """The fortunes of one file: ``%``-separated, whitespace collapsed, backspace overstrikes removed."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    text = re.sub(r".\x08", "", text)  # nroff-style overstriking (bold / underline)
    fortunes = []
    for chunk in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        words = " ".join(chunk.split())
        if words:
            fortunes.append(words)
    return fortunes


def write_fortunes(directory: str | Path, *, per_class: int = 580, eval_examples: int = 1002,
                   seed: int = 0, root: Path = FORTUNES) -> tuple[Path, Path]:
    """Write ``train.parquet`` and ``eval.parquet`` under ``directory``; return their paths.

    Raises:
        FileNotFoundError: if the ``fortunes`` package is not installed (``root`` is missing).
        ValueError: if a category has fewer than ``per_class`` fortunes, or the eval share
            leaves no training rows.
    """
    import datasets  # the field's reader/writer for data files

    missing = [c for c in CATEGORIES if not (root / c).is_file()]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)}: install Debian's `fortunes` package "
                                "(apt-get install fortunes)")
    per_eval, extra = divmod(eval_examples, len(CATEGORIES))
    if extra or per_eval >= per_class:
        raise ValueError(f"eval_examples = {eval_examples} must be a multiple of {len(CATEGORIES)} "
                         f"below {per_class} x {len(CATEGORIES)}")
    rng = random.Random(seed)
    train: dict[str, list[str]] = {"prompt": [], "label": []}
    held: dict[str, list[str]] = {"prompt": [], "label": []}
    for category in CATEGORIES:
        fortunes = sorted(set(read_fortunes(root / category)))
        if len(fortunes) < per_class:
            raise ValueError(f"{root / category} holds {len(fortunes)} distinct fortunes, fewer than {per_class}")
        chosen = rng.sample(fortunes, per_class)
        name = category.replace("-", " and ")
        for split, rows in ((held, chosen[:per_eval]), (train, chosen[per_eval:])):
            split["prompt"] += rows
            split["label"] += [name] * len(rows)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.parquet", out / "eval.parquet"
    datasets.disable_progress_bars()
    for columns, path in zip((train, held), paths, strict=True):
        order = list(range(len(columns["label"])))
        rng.shuffle(order)
        datasets.Dataset.from_dict({k: [v[i] for i in order] for k, v in columns.items()}).to_parquet(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--per-class", type=int, default=580)
    parser.add_argument("--eval-examples", type=int, default=1002)
    args = parser.parse_args()
    for path in write_fortunes(args.directory, per_class=args.per_class, eval_examples=args.eval_examples):
        print(path)


if __name__ == "__main__":
    main()
