"""The Typer application every command module registers on. Kept apart so modules stay independent."""

import typer

app = typer.Typer(
    name="nascloud",
    help="Plan, launch and babysit AutoKeras searches on spot GPUs, within a budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
