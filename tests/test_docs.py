"""Every command, sub-commands included, has help text and a `### nascloud <command>` README entry."""

import re
from pathlib import Path

import pytest
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


# Rows of the README's table of the launching user's AWS actions that `nascloud check` does not ask about, with
# why; the bucket's s3 actions anywhere in it are the bucket line's (check writes, reads and deletes there).
UNSIMULATED_ROWS = {
    "the bill check": "status records a refused bill check as its error and goes on",
    "fire drill": "`nascloud drill` makes its own role; no launch needs it",
    "the bucket": "the bucket line's probe",
}


@pytest.mark.strict_cloud
def test_the_readmes_aws_policy_for_the_launching_user_is_the_one_check_asks_about():
    from nascloud.checking import AWS_ACTIONS, AWS_SSH_ACTIONS

    table = re.split(r"What nascloud itself needs\s+on your machine", README, maxsplit=1)[1].split("\n\n", 2)[1]
    listed = set()
    for row in table.splitlines()[2:]:
        purpose, actions = row.strip("|").split("|")
        if not any(purpose.strip().startswith(skipped) for skipped in UNSIMULATED_ROWS):
            listed |= {a for a in re.findall(r"`([a-z0-9-]+:[A-Za-z]+)`", actions) if not a.startswith("s3:")}
    code = set(AWS_ACTIONS + AWS_SSH_ACTIONS)
    assert not code - listed, f"actions check asks about that the README's table omits: {sorted(code - listed)}"
    assert not listed - code, f"actions in the README's table that checking.py does not list: {sorted(listed - code)}"
