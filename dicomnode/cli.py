"""The ``dicomnode`` command line: assembles the command groups that live in dicomnode.commands."""

from __future__ import annotations

import typer

from dicomnode.commands import demo, models, node_admin, records, status
from dicomnode.commands import worker as cluster_worker
from dicomnode.commands.enhance import enhance
from dicomnode.commands.evaluate import evaluate
from dicomnode.commands.simulate import simulate
from dicomnode.commands.train import train

app = typer.Typer(
    help="DICOM node that enhances low-field MRI with Image Quality Transfer.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# --- command registration (one line per command) ---
app.command("serve")(node_admin.serve)
app.command("worker")(cluster_worker.worker)
app.command("echo")(node_admin.echo)
app.command("status")(status.status)
app.command("demo")(demo.demo)
app.command("enhance")(enhance)
app.command("train")(train)
app.command("evaluate")(evaluate)
app.command("simulate")(simulate)
app.add_typer(node_admin.config_app, name="config")
app.add_typer(node_admin.db_app, name="db")
app.add_typer(records.series_app, name="series")
app.add_typer(records.jobs_app, name="jobs")
app.add_typer(models.app, name="models")
# --- end of command registration ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
