"""The run configuration: one TOML file with a table per stage, defaults, overrides and a writer."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import tomllib

from facepipe.common import FacepipeError, write_text_atomic
from facepipe.settings import CONFIG_TABLES, config_problems, config_specs


class ConfigError(FacepipeError):
    """A run config (file or ``--set``) that cannot be used: bad TOML, an unknown section or option; the CLI
    exits with 2 (bad usage or bad config value), as for a bad value."""


DEFAULT_CONFIG_FILE = Path(__file__).with_name("default_config.toml")
PATH_OPTIONS = (
    ("run", "labels"),
    ("embed", "weights"),
    ("cluster", "people"),
)  # relative paths in a config file start at its folder


def default_config() -> dict[str, dict[str, Any]]:
    """The defaults of every stage, as shipped in ``facepipe/default_config.toml``."""
    with open(DEFAULT_CONFIG_FILE, "rb") as handle:
        return tomllib.load(handle)


def default_config_text() -> str:
    """The commented default config, as ``facepipe run --print-config`` shows it."""
    return DEFAULT_CONFIG_FILE.read_text(encoding="utf-8")


def _check_keys(config: dict, defaults: dict, origin: str) -> None:
    for section, values in config.items():
        if section not in defaults:
            raise ConfigError(f"{origin}: unknown section [{section}]; sections are {', '.join(defaults)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table of options")
        unknown = sorted(set(values) - set(defaults[section]))
        if unknown:
            raise ConfigError(
                f"{origin}: unknown option(s) {', '.join(unknown)} in [{section}]; "
                f"known: {', '.join(sorted(defaults[section]))}"
            )


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as a TOML value, falling back to a plain string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Defaults, then the TOML file at ``path``, then ``section.key=value`` overrides (later wins)."""
    defaults = default_config()
    config = copy.deepcopy(defaults)
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as handle:
                user = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path} is not valid TOML: {error}") from None
        _check_keys(user, defaults, str(path))
        for section, option in PATH_OPTIONS:
            value = user.get(section, {}).get(option)
            if isinstance(value, str) and value:
                user[section][option] = str((path.parent / Path(value).expanduser()).absolute())
        for section, values in user.items():
            config[section].update(values)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, option = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.option=value, e.g. cluster.k=5")
        _check_keys({section: {option: None}}, defaults, "--set")
        config[section][option] = parse_value(value.strip())
    return config


def checked_config(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``config`` with each value as its setting takes it ("Auto" as "auto"), or a ``ConfigError`` listing
    every value its setting does not take (``settings.config_problems``): all found before any stage runs."""
    problems = config_problems(config)
    if problems:
        raise ConfigError(
            f"the run config has {len(problems)} bad value(s); nothing was run:\n  " + "\n  ".join(problems)
        )
    checked = copy.deepcopy(config)
    for section, values in checked.items():
        specs = config_specs(section) if section in CONFIG_TABLES else {}
        for key, value in values.items():
            if key in specs and specs[key].takes_auto:
                values[key] = specs[key].normalised(value)
    return checked


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_toml(config: dict[str, dict[str, Any]]) -> str:
    """Write a config back as TOML (``None`` values, meaning 'not set', are left out)."""
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None)
        lines.append("")
    return "\n".join(lines)


def save_config(config: dict[str, dict[str, Any]], path: str | os.PathLike) -> None:
    """Save the config actually used, atomically."""
    write_text_atomic(path, config_to_toml(config))
