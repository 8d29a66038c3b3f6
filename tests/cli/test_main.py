"""`deepmetric` itself (deepmetric.cli): the command groups are registered in one place and every command has its
handler; a new group is a module with ``register`` plus one entry in GROUPS; exit statuses as a program."""

from __future__ import annotations

import argparse
import types

import pytest

import deepmetric.cli as cli
from tests.server_fixtures import deepmetric

COMMANDS = ["serve", "search", "info", "embed", "gallery", "publish", "pull", "releases", "viz"]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_comes_from_a_registered_group_and_has_a_handler():
    commands = _subcommands(cli.build_parser())
    assert list(commands) == COMMANDS
    for name, parser in commands.items():
        if name == "gallery":
            for sub in _subcommands(parser).values():
                assert callable(sub.get_default("handler")) or callable(parser.get_default("handler"))
        else:
            assert callable(parser.get_default("handler")), name
    # the commands that end with os._exit as a program (see main's docstring); serve, releases and viz return
    assert {n for n, p in commands.items() if p.get_default("hard_exit")} == {"search", "info", "embed", "gallery",
                                                                               "publish", "pull"}


def test_a_new_group_is_one_module_and_one_registration(monkeypatch, capsys):
    group = types.ModuleType("deepmetric.cli.hello")

    def register(sub):
        p = sub.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(handler=lambda args: print(f"hello {args.name}") or 7)

    group.register = register
    monkeypatch.setattr(cli, "GROUPS", (*cli.GROUPS, group))
    assert cli.main(["hello", "--name", "you"]) == 7
    assert capsys.readouterr().out == "hello you\n"
    assert list(_subcommands(cli.build_parser())) == [*COMMANDS, "hello"]


def test_in_process_usage_errors_raise_system_exit():
    with pytest.raises(SystemExit) as e:
        cli.main(["serve"])
    assert e.value.code == 3


def test_as_a_program():
    proc = deepmetric()
    assert proc.returncode == 3 and "required: command" in proc.stderr
    proc = deepmetric("--help")
    assert proc.returncode == 0 and "{serve,search,info,embed,gallery,publish,pull,releases,viz}" in proc.stdout
    proc = deepmetric("nope")
    assert proc.returncode == 3 and "invalid choice: 'nope'" in proc.stderr


def test_only_the_command_line_imports_the_command_line():
    """Serving, releases and the bundle do not import deepmetric.cli (the cycles serving.cli ↔ serving.runner and
    serving ↔ release came from a command line inside serving), and releases do not import serving."""
    import ast
    from pathlib import Path

    src = Path(cli.__file__).resolve().parents[1]

    def imports(package: str) -> set[tuple[str, str]]:
        found = set()
        for f in (src / package).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found |= {(f.relative_to(src).as_posix(), n) for n in names if n.startswith("deepmetric.")}
        return found

    for package in ("serving", "release", "bundle"):
        assert not [(f, n) for f, n in imports(package) if n.startswith("deepmetric.cli")], package
    assert not [(f, n) for f, n in imports("release") if n.startswith("deepmetric.serving")]
    assert not [(f, n) for f, n in imports("bundle") if n.startswith(("deepmetric.serving", "deepmetric.release"))]


def test_kedro_loads_the_project_commands_from_this_package():
    """Kedro imports ``<package_name>.cli`` (deepmetric.cli) for project commands and refuses to start when it has
    no ``cli`` group: every `kedro run` (and so `dvc repro`) depends on it."""
    from pathlib import Path

    from kedro.framework.cli.cli import KedroCLI

    repo = Path(__file__).resolve().parents[2]
    groups = KedroCLI(project_path=repo).project_groups
    assert groups[0] is cli.cli and cli.cli.list_commands(None) == []
