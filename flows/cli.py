"""The ``prmforge`` command line.

Each command group lives in ``flows/commands/<group>.py`` and adds itself to the app through
``register(app)``. A user mistake (``PrmforgeError``) prints one line and exits 2, never a
traceback.
"""

from __future__ import annotations

import sys

import typer

from data_schemas.errors import PrmforgeError
from flows.commands import Terminated, build, data, datasets, doctor, evaluate, problems, train

app = typer.Typer(
    name="prmforge",
    help="Generate step-labeled process-supervision (PRM) data for math reasoning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for group in (problems, doctor, build, data, datasets, evaluate, train):
    group.register(app)


def main() -> None:
    try:
        app(standalone_mode=True)
    except PrmforgeError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except SystemExit as ended:
        # click turns an interrupt no command caught into "Aborted!" and exit status 1; a SIGTERM
        # (commands/__init__.sigterm_as_interrupt) keeps its conventional status: a scheduler
        # tells a stop from a failure by it.
        aborted = ended.__context__
        if aborted is not None and isinstance(aborted.__cause__, Terminated):
            sys.exit(Terminated.exit_code)
        raise


if __name__ == "__main__":
    main()
