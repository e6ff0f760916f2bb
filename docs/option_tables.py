"""The option tables of docs/commands.md, made from each command's --help (whose options, defaults, ranges and
help come from facepipe/settings.py), so that they cannot drift: tests/test_docs.py checks them, and

    python docs/option_tables.py

rewrites them in place, between the OPTIONS_BEGIN and OPTIONS_END marks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

COMMANDS_MD = Path(__file__).with_name("commands.md")
OPTIONS_BEGIN = "<!-- option tables: made by docs/option_tables.py from --help; do not edit by hand -->"
OPTIONS_END = "<!-- end of the option tables -->"
COMMANDS = (
    ("detect",),
    ("embed",),
    ("cluster",),
    ("train-cvae",),
    ("generate",),
    ("probe", "train"),
    ("probe", "predict"),
    ("probe", "evaluate"),
    ("run",),
    ("export",),
    ("assign",),
    ("suggest",),
    ("review",),
    ("read-tags",),
)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def option_table(path: tuple[str, ...]) -> str:
    """The markdown table of one command's options, as its --help lists them."""
    from facepipe.cli import main

    command, context = main, click.Context(main, info_name="facepipe")
    for name in path:
        command = command.commands[name]
        context = click.Context(command, info_name=name, parent=context)
    rows = ["| option | what it takes, and its default |", "| --- | --- |"]
    for param in command.get_params(context):
        record = param.get_help_record(context)
        if isinstance(param, click.Option) and record is not None and "--help" not in record[0]:
            rows.append(f"| `{_cell(record[0])}` | {_cell(record[1])} |")
    return "\n".join([f"#### facepipe {' '.join(path)}", "", *rows])


def option_tables() -> str:
    """Every command's table, between the marks."""
    return "\n\n".join([OPTIONS_BEGIN, *(option_table(path) for path in COMMANDS), OPTIONS_END])


def with_tables(text: str) -> str:
    """``text`` (commands.md) with its option tables made anew."""
    before, _, rest = text.partition(OPTIONS_BEGIN)
    _, _, after = rest.partition(OPTIONS_END)
    return before + option_tables() + after


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    COMMANDS_MD.write_text(with_tables(COMMANDS_MD.read_text(encoding="utf-8")), encoding="utf-8")
