"""Every command, sub-commands included, has help text and a `### nascloud <command>` README entry."""

import re
from pathlib import Path

import typer.main

from nascloud.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def walk(command, path: tuple[str, ...] = ()):
    """Leaf commands of the tree. Duck-typed: Typer 0.17+ builds on its own copy of click."""
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            if not sub.hidden:
                yield from walk(sub, (*path, name))
    else:
        yield " ".join(path), command


COMMANDS = sorted(walk(typer.main.get_command(app)), key=lambda item: item[0])


def test_the_tree_has_the_planning_commands():
    assert {"estimate", "prices", "plan"} <= {name for name, _ in COMMANDS}


def test_every_command_has_help_text():
    missing = [name for name, command in COMMANDS if not (command.help or "").strip()]
    assert not missing, f"commands without help text: {missing}"


def test_every_command_has_a_readme_entry():
    headings = set(re.findall(r"^### nascloud ([a-z][a-z -]*?)\s*$", README, flags=re.MULTILINE))
    missing = [name for name, _ in COMMANDS if name not in headings]
    assert not missing, f"commands without a `### nascloud <command>` README entry: {missing}"
