"""The ``dicomnode`` command line: assembles the command groups that live in dicomnode.commands."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="DICOM node that enhances low-field MRI with Image Quality Transfer.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# --- command registration (one line per command module) ---
from dicomnode.commands import node_admin, records  # noqa: E402

app.command("serve")(node_admin.serve)
app.command("echo")(node_admin.echo)
app.add_typer(node_admin.config_app, name="config")
app.add_typer(node_admin.db_app, name="db")
app.add_typer(records.series_app, name="series")
app.add_typer(records.jobs_app, name="jobs")
from dicomnode.commands.enhance import enhance as _enhance; app.command("enhance")(_enhance)  # noqa: E402, E702, I001
from dicomnode.commands.train import train as _train; app.command("train")(_train)  # noqa: E402, E702, I001
from dicomnode.commands.evaluate import evaluate as _evaluate; app.command("evaluate")(_evaluate)  # noqa: E402, E702, I001
from dicomnode.commands.simulate import simulate as _simulate; app.command("simulate")(_simulate)  # noqa: E402, E702, I001
# --- end of command registration ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
