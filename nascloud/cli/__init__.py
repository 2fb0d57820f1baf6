"""The command line: thin commands over the library. The only place errors become exit codes."""

from __future__ import annotations

import os
import sys

# nascloud uses no pydantic plugins, and looking for them reads every installed package's metadata when the
# first model is built: about 10 ms of every command (benchmarks/bench_cli_speed.py).
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import typer  # noqa: E402

from nascloud.cli.app import app  # noqa: E402
from nascloud.errors import NascloudError  # noqa: E402
from nascloud.hints import command  # noqa: E402

# Each module registers its commands on `app`; importing them must stay cheap (no cloud SDKs,
# no TensorFlow): heavy imports live inside the commands that use them.
from nascloud.cli import planning  # noqa: F401,E402  estimate, prices, plan
from nascloud.cli import checkpoints  # noqa: F401,E402  checkpoints list, pull
from nascloud.cli import agent  # noqa: F401,E402  agent, calibrate
from nascloud.cli import jobs  # noqa: F401,E402  launch, status, watch, logs, stop, resume, results, drill, gc


try:  # Typer 0.17+ carries its own copy of click, whose exceptions are not the click package's
    from typer._click import exceptions as cli_errors
except ImportError:  # older Typer runs on click itself
    from click import exceptions as cli_errors


def _fail(message: str, code: int) -> None:
    typer.echo(f"Error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    try:
        result = app(prog_name="nascloud", standalone_mode=False)
    except NascloudError as error:
        _fail(str(error), error.exit_code)
    except cli_errors.NoArgsIsHelpError as error:
        typer.echo(error.ctx.get_help() if error.ctx else f"see {command('--help')}")
        sys.exit(0)
    except cli_errors.UsageError as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        _fail(f"{error.format_message()}{hint}", 2)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.Exit as stop:
        sys.exit(stop.exit_code)
    sys.exit(result if isinstance(result, int) else 0)
