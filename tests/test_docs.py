"""Docs that match the code: every config key is documented, and only real keys are."""

import dataclasses
import re
from pathlib import Path

from fedtune.config import RunConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _code_keys():
    keys = set()
    default = RunConfig()
    for name, section in default.sections:  # the algorithms' own tables ([fedprox], ...)
        keys |= {f"{name}.{f.name}" for f in dataclasses.fields(section)}
    for field in dataclasses.fields(RunConfig):
        value = getattr(default, field.name)
        if field.name == "sections":
            continue
        if dataclasses.is_dataclass(value):
            keys |= {f"{field.name}.{f.name}" for f in dataclasses.fields(value)}
        else:
            keys.add(field.name)
    return keys


def _doc_keys():
    keys, section = set(), None
    for line in DOC.read_text().splitlines():
        if match := re.match(r"^## `\[(\w+)\]`", line):
            section = match.group(1)
        elif line.startswith("## "):
            section = None if line.startswith("## Top level") else "other"
        if (match := re.match(r"^\| `(\w+)` \|", line)) and section != "other":
            keys.add(f"{section}.{match.group(1)}" if section else match.group(1))
    return keys


def test_every_config_key_is_documented_and_vice_versa():
    code, doc = _code_keys(), _doc_keys()

    assert len(code) > 30  # the walk found the nested sections
    assert code - doc == set(), "keys missing from docs/configuration.md"
    assert doc - code == set(), "documented keys that do not exist"
