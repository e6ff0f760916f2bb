"""The option tables of docs/commands.md are the commands' own --help (docs/option_tables.py makes them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast


def option_tables_module():
    spec = importlib.util.spec_from_file_location("option_tables", REPO / "docs" / "option_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_option_tables_of_commands_md_are_the_commands_help():
    """Rerun `python docs/option_tables.py` where this fails: an option, a default or a range changed."""
    tables = option_tables_module()
    text = tables.COMMANDS_MD.read_text(encoding="utf-8")
    assert text.count(tables.OPTIONS_BEGIN) == 1 and text.count(tables.OPTIONS_END) == 1
    assert tables.with_tables(text) == text
    assert "`--min-neighbors INTEGER RANGE` | Higher: fewer false positives, more missed faces. [default: 45;" in text
