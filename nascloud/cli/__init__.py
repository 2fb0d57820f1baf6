"""The command line: thin commands over the library. The only place errors become exit codes."""

from __future__ import annotations

import sys

import click

from nascloud.cli.app import app
from nascloud.errors import NascloudError

# Each module registers its commands on `app`; importing them must stay cheap (no cloud SDKs,
# no TensorFlow): heavy imports live inside the commands that use them.
from nascloud.cli import planning  # noqa: F401,E402  estimate, prices, plan
from nascloud.cli import checkpoints  # noqa: F401,E402  checkpoints list, pull
from nascloud.cli import agent  # noqa: F401,E402  agent, calibrate


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    try:
        result = app(standalone_mode=False)
    except NascloudError as error:
        _fail(str(error), error.exit_code)
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(0)
    except click.UsageError as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        _fail(f"{error.format_message()}{hint}", 2)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.exceptions.Exit as stop:
        sys.exit(stop.exit_code)
    sys.exit(result if isinstance(result, int) else 0)
