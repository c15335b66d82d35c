"""README's mode table and flag table against the registry and main.py's parser: adding a
mode or a flag without its README row fails here, naming what is missing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.supervision import ROOT
from trainer import registry
from trainer.options import build_parser

README = (Path(ROOT) / "README.md").read_text(encoding="utf-8")
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def table_rows(header: str, text: str) -> list[list[str]]:
    """The cells of the rows of the Markdown table of ``text`` that starts with ``header``."""
    lines = text[text.index(header) :].splitlines()[2:]  # after the header and |---|
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def documented_modes(text: str = README) -> list[str]:
    rows = table_rows("| mode | KVStore | local update | synchronisation (one round) |", text)
    return [re.match(r"`([^`]+)`", row[0]).group(1) for row in rows]


def documented_flags(text: str = README) -> set[str]:
    flags: set[str] = set()
    for row in table_rows("| flag | meaning | default (`config.py`) |", text):
        for code in re.findall(r"`([^`]*)`", row[0]):
            flags.update(FLAG.findall(code))
    return flags


def test_the_mode_table_has_one_row_per_registered_mode() -> None:
    modes = documented_modes()
    assert len(modes) == len(set(modes)), f"a mode has two rows: {modes}"
    assert sorted(modes) == sorted(registry.names()), "README's mode table and the registry differ"


def test_every_flag_of_main_py_has_a_row_and_every_row_is_a_flag() -> None:
    parser = build_parser()
    actions = [a for a in parser._actions if a.option_strings and "-h" not in a.option_strings]
    missing = [
        a.option_strings[-1] for a in actions if not set(a.option_strings) & documented_flags()
    ]
    known = {o for a in actions for o in a.option_strings}
    assert missing == [], f"README's flag table lacks {missing}"
    assert documented_flags() - known == set(), "README's flag table names unknown flags"


@pytest.mark.parametrize(
    ("header", "row", "seen"),
    [
        ("| mode | KVStore", "| `nova` | x |", lambda t: documented_modes(t)[0] == "nova"),
        ("| flag | meaning", "| `--nope` | x |", lambda t: "--nope" in documented_flags(t)),
    ],
)
def test_the_checks_see_a_row_too_many(header: str, row: str, seen) -> None:
    at = README.index(header)
    lines = README[at:].splitlines()
    lines.insert(2, row)
    assert seen(README[:at] + "\n".join(lines))
