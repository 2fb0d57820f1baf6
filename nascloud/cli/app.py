"""The Typer application every command module registers on, and the conventions every command shares:
`-h`/`--help`, `--version`, shell completion, usage lines in one notation (`nascloud launch [OPTIONS]
JOB.yaml`, `[JOB]` when optional) and an example at the end of each command's help.
Kept apart so the command modules stay independent."""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from nascloud.errors import UsageError

# One example per command and group ("" is `nascloud` itself), shown at the end of its help. Each one a user
# types runs as printed from the repository's root on the local provider (tests/test_screens_help.py runs
# them): none asks on a terminal, and only `check`, which is for the clouds, needs their credentials.
# digits-1a2b3c is a job id as `launch` prints it.
EXAMPLES = {
    "": "nascloud estimate examples/digits-local.yaml",
    "prices": "nascloud prices --gpu T4 --cloud aws",
    "estimate": "nascloud estimate examples/digits-aws-t4-spot.yaml --set search.max_trials=40 --budget 10",
    "plan": "nascloud plan examples/digits-aws-t4-spot.yaml --budget 800",
    "check": "nascloud check examples/digits-aws-t4-spot.yaml --bucket s3://my-bucket/nascloud",
    "launch": "nascloud launch examples/digits-local.yaml --budget 2 --dry-run",
    "watch": "nascloud watch digits-1a2b3c",
    "status": "nascloud status            # every job launched here",
    "logs": "nascloud logs digits-1a2b3c --follow",
    "stop": "nascloud stop digits-1a2b3c",
    "resume": "nascloud resume digits-1a2b3c --budget +5 --detach",
    "results": "nascloud results digits-1a2b3c --download results/",
    "drill": "nascloud drill digits-1a2b3c",
    "ssh": "nascloud ssh digits-1a2b3c --command nvidia-smi",
    "gc": "nascloud gc --cloud local --yes",
    "rm": "nascloud rm digits-1a2b3c --yes",
    "agent": "nascloud agent s3://my-bucket/nascloud/digits-1a2b3c --instance-id i-0abc",
    "calibrate": "nascloud calibrate examples/digits-local.yaml",
    "history": "nascloud history examples/digits-local.yaml",
    "checkpoints": "nascloud checkpoints list digits-1a2b3c",
    "checkpoints list": "nascloud checkpoints list digits-1a2b3c",
    "checkpoints pull": "nascloud checkpoints pull digits-1a2b3c ./search-state",
}
CONTEXT = {"help_option_names": ["-h", "--help"]}

# launch, estimate and plan: any job-file field, as `plan` prints its stages' overrides.
SETTINGS = typer.Option(None, "--set", metavar="KEY=VALUE", show_default=False,
                        help="Set a job-file field for this run (repeatable), e.g. --set search.max_trials=40.")


def ask_first(lines: list[str], question: str, what: str, flag: str = "--yes") -> None:
    """Show what is about to happen (on stderr: stdout stays the command's answer) and ask. Without a terminal
    to ask on, refuse (exit 2): a script passes the flag."""
    typer.echo("\n".join(lines), err=True)
    if not sys.stdin.isatty():
        raise UsageError(f"{what}, and there is no terminal to ask on; pass {flag} to go ahead without asking")
    if not typer.confirm(question, err=True):
        typer.echo("nothing done", err=True)
        raise typer.Exit(1)


def complete_job(incomplete: str) -> list[str]:
    """Shell completion of a JOB argument: the jobs this machine knows, newest first."""
    import sqlite3

    from nascloud.state import JobCache

    try:
        known = JobCache().jobs()
    except (OSError, sqlite3.Error):  # a completion must never print a traceback into the user's shell
        return []
    return [job.job_id for job in reversed(known) if job.job_id.startswith(incomplete)]


def _example(ctx) -> Optional[str]:
    return EXAMPLES.get(ctx.command_path.partition(" ")[2])


def _format_example(ctx, formatter) -> None:
    example = _example(ctx)
    if example:
        with formatter.section("Example"):
            formatter.write(f"{'':>{formatter.current_indent}}{example}\n")  # as typed: never wrapped


class Command(TyperCommand):
    """A command whose usage names its arguments as `JOB` (required) or `[JOB]` (optional), as the
    argument list below it does, and whose help ends with its example."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:
        arguments = [(argument_name(p), p.help or "") for p in self.get_params(ctx)
                     if p.param_type_name == "argument" and not p.hidden]
        options = [p.get_help_record(ctx) for p in self.get_params(ctx) if p.param_type_name == "option"]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        with formatter.section("Options"):
            formatter.write_dl([record for record in options if record])

    def format_epilog(self, ctx, formatter) -> None:
        super().format_epilog(ctx, formatter)
        _format_example(ctx, formatter)


def argument_name(param) -> str:
    return param.metavar or param.name.upper()


class Group(TyperGroup):
    """The command list shows each command's whole first sentence (wrapped), not one cut at 45 columns, and
    the help ends with the group's example, as a command's does."""

    def format_commands(self, ctx, formatter) -> None:
        rows = [(name, command.get_short_help_str(limit=10_000)) for name in self.list_commands(ctx)
                if (command := self.get_command(ctx, name)) is not None and not command.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def format_epilog(self, ctx, formatter) -> None:
        super().format_epilog(ctx, formatter)
        _format_example(ctx, formatter)


class Typer(typer.Typer):
    """typer.Typer whose commands follow the conventions above (used by every command module)."""

    def __init__(self, **settings):
        super().__init__(cls=Group, context_settings=CONTEXT, pretty_exceptions_enable=False,
                         rich_markup_mode=None, **settings)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = Typer(
    name="nascloud",
    help="Plan, launch and babysit AutoKeras searches on spot GPUs, within a budget.",
    no_args_is_help=True,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"nascloud {version('nascloud')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print nascloud's version and exit."),
) -> None:
    """Plan, launch and babysit AutoKeras searches on spot GPUs, within a budget."""
