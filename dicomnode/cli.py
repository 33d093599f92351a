"""The ``dicomnode`` command line: assembles the command groups that live in dicomnode.commands."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="DICOM node that enhances low-field MRI with Image Quality Transfer.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# --- command registration (one line per command module) ---
# --- end of command registration ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
