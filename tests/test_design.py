"""Checks of the code's shape that a reader can repeat (issue 15): no import circle between facepipe's modules.

Needs no data and no model: it reads the source only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facepipe"
pytestmark = pytest.mark.fast


def imports_of_each_module() -> dict[str, set[str]]:
    """facepipe module -> the facepipe modules it imports anywhere in its source (at the top or inside functions)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("facepipe"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("facepipe"))
        modules[name] = found
    return {name: {other for other in found if other in modules and other != name} for name, found in modules.items()}


def test_no_import_circle_between_modules():
    graph = imports_of_each_module()
    assert {"facepipe.run", "facepipe.report", "facepipe.crops", "facepipe.cvae"} <= set(graph)
    circles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open" and other != "facepipe":
                circles.append(path[path.index(other):] + [other] if other in path else [module, other])
            elif other not in state:
                visit(other, path + [other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


def stage_defaults() -> dict[str, dict]:
    """Each run-config section's stage: the defaults of its Python function (and options dataclass)."""
    import dataclasses
    import inspect

    from facepipe.cluster import cluster
    from facepipe.cvae import train_cvae
    from facepipe.detect import DetectorParams, detect
    from facepipe.embed import embed
    from facepipe.generate import generate

    def of_function(function) -> dict:
        return {name: p.default for name, p in inspect.signature(function).parameters.items()
                if p.default is not inspect.Parameter.empty}

    detect_defaults = {f.name: f.default for f in dataclasses.fields(DetectorParams)} | of_function(detect)
    return {"detect": detect_defaults, "embed": of_function(embed), "cluster": of_function(cluster),
            "train_cvae": of_function(train_cvae), "generate": of_function(generate)}


def test_each_default_is_the_same_in_the_cli_the_run_config_and_the_functions():
    """`facepipe run` and the single commands behave the same: every option of a stage's [table] in the default
    run config is an option of its command, with the same name and default, and the stage function's default."""
    from facepipe.cli import main
    from facepipe.config import default_config

    commands = {"detect": "detect", "embed": "embed", "cluster": "cluster", "train_cvae": "train-cvae",
                "generate": "generate"}
    functions = stage_defaults()
    disagreements = []
    for section, values in default_config().items():
        if section not in commands:
            continue
        options = {p.name: (False if getattr(p, "is_flag", False) and not isinstance(p.default, bool) else p.default)
                   for p in main.commands[commands[section]].params}
        for key, value in values.items():
            value = None if value == "" else value
            for where, defaults in (("command line", options), ("function", functions[section])):
                expected = value
                if isinstance(value, list):  # a range: "2:40" on the command line, a sequence in Python
                    expected = ":".join(map(str, value)) if where == "command line" else tuple(value)
                found = tuple(defaults[key]) if isinstance(defaults.get(key), list) else defaults.get(key, KeyError)
                if found is KeyError:
                    disagreements.append(f"[{section}] {key} = {value!r}: no such option of the {where}")
                elif found != expected:
                    disagreements.append(f"[{section}] {key} = {value!r}, {where}: {found!r}")
    assert not disagreements, "\n".join(disagreements)


# Options of a single command that a run config does not set: inputs and outputs (the run folder fixes them),
# and what the run decides itself (force and resume from its stage cache, the progress bars from -q).
NOT_IN_RUN_CONFIG = {"inputs", "out_dir", "output", "crops", "crops_dir", "embeddings", "cluster_results",
                     "weights_dir", "checkpoint", "samples_dir", "labels", "force", "quiet", "resume",
                     "cluster_ids", "all_clusters", "no_samples"}


def test_every_setting_of_a_command_can_be_set_in_a_run_config():
    """No setting of a single command is out of reach of `facepipe run` (issue 15: --channels and train-cvae's
    --workers were)."""
    from facepipe.cli import main
    from facepipe.config import default_config

    commands = {"detect": "detect", "embed": "embed", "cluster": "cluster", "train_cvae": "train-cvae",
                "generate": "generate"}
    config = default_config()
    missing = [f"{command} --{p.name.replace('_', '-')} (no [{section}] {p.name})"
               for section, command in commands.items() for p in main.commands[command].params
               if p.name not in config[section] and p.name not in config["run"]  # [run] engine: detect's and embed's
               and p.name not in NOT_IN_RUN_CONFIG and not getattr(p, "hidden", False)
               and (section, p.name) != ("generate", "device")]  # run's generate uses [train_cvae] device
    assert not missing, "\n".join(missing)


def test_option_names_are_the_config_keys_with_dashes():
    """`--latent-dim` is `latent_dim`: every visible option of a stage command is spelled as its parameter."""
    from facepipe.cli import main

    differ = []
    for command in ("detect", "embed", "cluster", "train-cvae", "generate", "run"):
        for param in main.commands[command].params:
            if getattr(param, "hidden", False) or not getattr(param, "opts", None) or param.param_type_name != "option":
                continue
            spelled = [opt for opt in param.opts if opt.startswith("--")]
            if f"--{param.name.replace('_', '-')}" not in spelled and param.name not in NAMED_OTHERWISE:
                differ.append(f"{command} {'/'.join(spelled)} sets {param.name}")
    assert not differ, "\n".join(differ)


# Parameters whose option says what the user gives rather than the parameter's name.
NAMED_OTHERWISE = {"out_dir", "output", "weights_dir", "cluster_ids", "all_clusters", "config_file", "overrides",
                   "from_stage", "as_json", "cluster_results"}


def test_public_api_examples_run_as_written(monkeypatch):
    """The examples in facepipe.api's docstring (find, embed and group the bundled photos) give what they show."""
    import doctest

    import facepipe.api

    monkeypatch.chdir(PACKAGE.parent)
    result = doctest.testmod(facepipe.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 5 and result.failed == 0


def test_no_long_functions_and_no_private_imports_across_modules():
    """No function in facepipe/ over 80 lines; no module imports another module's private (_name) helpers."""
    long, private = [], []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.name}: {node.name} ({node.end_lineno - node.lineno + 1} lines)")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("facepipe"):
                private += [f"{path.name}: {alias.name} from {node.module}" for alias in node.names
                            if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not long and not private, long + private


def test_the_checkpoint_config_defaults_are_train_cvaes():
    """CVAEConfig (what a checkpoint records) starts from train_cvae's defaults, not from numbers of its own."""
    import dataclasses

    from facepipe.cvae import CVAEConfig

    functions = stage_defaults()["train_cvae"]
    renamed = {"alignment": "align"}
    differ = [f"{f.name}: {f.default!r} vs {functions[renamed.get(f.name, f.name)]!r}"
              for f in dataclasses.fields(CVAEConfig)
              if renamed.get(f.name, f.name) in functions and f.name not in ("identity_weight", "crops_dir")  # resolved
              and f.default != functions[renamed.get(f.name, f.name)]]
    assert not differ, differ
