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
                circles.append(path[path.index(other) :] + [other] if other in path else [module, other])
            elif other not in state:
                visit(other, path + [other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


# Each command and the settings classes its options come from.
COMMAND_SETTINGS = {
    "detect": ("DetectorParams", "DetectWork"),
    "embed": ("EmbedSettings",),
    "cluster": ("ClusterSettings",),
    "train-cvae": ("TrainSettings",),
    "generate": ("GenerateSettings",),
    "export": ("ExportSettings",),
    "assign": ("AssignSettings",),
    "suggest": ("SuggestSettings",),
    "review": ("ReviewSettings",),
}
# The stage functions (module, function) and the settings class their loose arguments are checked against.
STAGE_FUNCTIONS = [
    ("detect", "detect", "DetectWork"),
    ("embed", "embed", "EmbedSettings"),
    ("generate", "generate", "GenerateSettings"),
    ("probe", "train", "ProbeSettings"),
    ("export", "export", "ExportSettings"),
    ("assign", "assign", "AssignSettings"),
    ("api", "group_faces", "ClusterSettings"),
    ("models/registry", "load_embedder", "EmbedSettings"),
    ("suggest", "suggest", "SuggestSettings"),
    ("review_page", "review", "ReviewSettings"),
]


def test_the_default_run_config_is_the_spec():
    """default_config.toml holds every run-config setting of the spec (facepipe.settings), in its order, with its
    default: its comments explain, the spec decides."""
    from facepipe.config import default_config
    from facepipe.settings import config_defaults

    shipped, spec = default_config(), config_defaults()
    assert list(shipped) == list(spec)
    for section in spec:
        assert list(shipped[section].items()) == list(spec[section].items()), section


def test_each_command_option_takes_its_default_and_type_from_the_spec():
    """Every option of a stage command that is a setting has the spec's default (its command default where it
    has one); `run`'s shortcuts have none (the config's apply)."""
    import click

    from facepipe import settings
    from facepipe.cli import main, probe

    commands = dict(main.commands, **{"probe train": probe.commands["train"]})
    kinds = dict(COMMAND_SETTINGS, **{"probe train": ("ProbeSettings",)})
    differ, checked = [], 0
    for command, names in kinds.items():
        specs = {n: s for name in names for n, s in getattr(settings, name).spec().items() if s.command}
        params = {p.name: p for p in commands[command].params}
        for name, spec in specs.items():
            if name not in params:
                continue
            expected = spec.default if spec.command_default is None else spec.command_default
            expected = ":".join(map(str, expected)) if spec.kind == "k_range" else expected
            if params[name].default != expected:
                differ.append(f"{command} {name}: {params[name].default!r} vs the spec's {expected!r}")
            if spec.kind == "choice" and list(params[name].type.choices) != list(spec.choices):
                differ.append(f"{command} {name}: choices {params[name].type.choices} vs {spec.choices}")
            checked += 1
    assert checked > 60 and not differ, "\n".join(differ)
    run = {p.name: p for p in main.commands["run"].params}
    assert all(run[name].default is None for name in ("model", "k", "device", "engine"))
    assert isinstance(run["k"].type.inner, click.IntRange)


def literal_defaults(function: ast.FunctionDef) -> dict[str, str]:
    """The parameters of ``function`` whose default is written as a literal (a number, a string, a tuple...)."""
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    pairs = list(zip(positional[len(positional) - len(arguments.defaults) :], arguments.defaults))
    pairs += [(a, d) for a, d in zip(arguments.kwonlyargs, arguments.kw_defaults) if d is not None]
    return {
        a.arg: ast.unparse(d)
        for a, d in pairs
        if isinstance(d, (ast.Constant, ast.Tuple, ast.List, ast.UnaryOp)) and ast.unparse(d) != "None"
    }


def test_no_default_or_choice_of_a_stage_setting_outside_its_spec():
    """The spec (facepipe.settings) is the one place a stage setting's default and choices are written: cli.py
    writes no default and no choices for an option that is a setting, and the stage functions take their
    defaults from the spec (``workers: int = DetectWork.workers``), not as literals of their own."""
    from facepipe import settings

    setting_names = {
        n for kinds in COMMAND_SETTINGS.values() for name in kinds for n in getattr(settings, name).spec()
    }
    found = []
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "click.option":
            names = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if not names:  # setting_option's own call, from the spec
                continue
            dest = next((n for n in names if not n.startswith("-")), names[0].lstrip("-").replace("-", "_"))
            if dest in setting_names:
                found.append(f"cli.py: option {names[0]} is a setting, written by hand")
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "click.Choice"
            and node.args
            and isinstance(node.args[0], (ast.List, ast.Tuple))
        ):
            found.append(f"cli.py: choices {ast.unparse(node.args[0])} written by hand")
    for module, function, kind in STAGE_FUNCTIONS:
        specs = getattr(settings, kind).spec()
        tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
        definition = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
        found += [
            f"{module}.{function}({name}={value})"
            for name, value in literal_defaults(definition).items()
            if name in specs or name == "Cs"
        ]
    for module, function in (("cluster", "cluster"), ("cvae/training", "train_cvae")):
        tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
        definition = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
        loose = [a.arg for a in definition.args.args + definition.args.kwonlyargs]
        if len(loose) > 8:
            found.append(f"{module}.{function} takes {len(loose)} arguments: {', '.join(loose)}")
    assert not found, "\n".join(found)


# Options of a single command that a run config does not set: inputs and outputs (the run folder fixes them),
# and what the run decides itself (force and resume from its stage cache, the progress bars from -q).
NOT_IN_RUN_CONFIG = {
    "inputs",
    "out_dir",
    "output",
    "crops",
    "crops_dir",
    "embeddings",
    "cluster_results",
    "weights_dir",
    "checkpoint",
    "samples_dir",
    "labels",
    "force",
    "quiet",
    "resume",
    "cluster_ids",
    "all_clusters",
    "no_samples",
}


def test_every_setting_of_a_command_can_be_set_in_a_run_config():
    """No setting of a single command is out of reach of `facepipe run` (issue 15: --channels and train-cvae's
    --workers were)."""
    from facepipe.cli import main
    from facepipe.config import default_config

    commands = {
        "detect": "detect",
        "embed": "embed",
        "cluster": "cluster",
        "train_cvae": "train-cvae",
        "generate": "generate",
    }
    config = default_config()
    missing = [
        f"{command} --{p.name.replace('_', '-')} (no [{section}] {p.name})"
        for section, command in commands.items()
        for p in main.commands[command].params
        if p.name not in config[section]
        and p.name not in config["run"]  # [run] engine: detect's and embed's
        and p.name not in NOT_IN_RUN_CONFIG
        and not getattr(p, "hidden", False)
        and (section, p.name) != ("generate", "device")
    ]  # run's generate uses [train_cvae] device
    assert not missing, "\n".join(missing)


def test_option_names_are_the_config_keys_with_dashes():
    """`--latent-dim` is `latent_dim`: every visible option of a stage command is spelled as its parameter."""
    from facepipe.cli import main

    differ = []
    for command in ("detect", "embed", "cluster", "train-cvae", "generate", "run"):
        for param in main.commands[command].params:
            if (
                getattr(param, "hidden", False)
                or not getattr(param, "opts", None)
                or param.param_type_name != "option"
            ):
                continue
            spelled = [opt for opt in param.opts if opt.startswith("--")]
            if f"--{param.name.replace('_', '-')}" not in spelled and param.name not in NAMED_OTHERWISE:
                differ.append(f"{command} {'/'.join(spelled)} sets {param.name}")
    assert not differ, "\n".join(differ)


# Parameters whose option says what the user gives rather than the parameter's name.
NAMED_OTHERWISE = {
    "out_dir",
    "output",
    "weights_dir",
    "cluster_ids",
    "all_clusters",
    "config_file",
    "overrides",
    "from_stage",
    "as_json",
    "cluster_results",
}


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
                private += [
                    f"{path.name}: {alias.name} from {node.module}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not long and not private, long + private


def test_the_checkpoint_config_defaults_are_train_cvaes():
    """CVAEConfig (what a checkpoint records) starts from train-cvae's settings, not from numbers of its own."""
    import dataclasses

    from facepipe.cvae import CVAEConfig
    from facepipe.settings import TrainSettings

    spec = TrainSettings.spec()
    renamed = {"alignment": "align"}
    differ = [
        f"{f.name}: {f.default!r} vs {spec[renamed.get(f.name, f.name)].default!r}"
        for f in dataclasses.fields(CVAEConfig)
        if renamed.get(f.name, f.name) in spec
        and f.name != "identity_weight"  # resolved from "auto"
        and f.default != spec[renamed.get(f.name, f.name)].default
    ]
    assert not differ, differ
