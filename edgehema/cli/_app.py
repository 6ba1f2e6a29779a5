"""The typer application every command module registers on, and what they share: the consoles,
the one-line error, the progress bar. Errors a user can cause end as one line on stderr
(``edgehema: error: ...``) and a non-zero exit status; a traceback means a bug.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from edgehema import __version__
from edgehema.exceptions import EdgehemaError
from edgehema.model.classifier import Classifier

app = typer.Typer(
    name="edgehema",
    help="Classify hematology-analyzer cell events (RBC, PLT, reticulocytes) on the device attached to the instrument.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Plain help: rich markup would eat "[export]" and "KIND[@SAMPLE]", and this typer shows
    # flags as "<bool>" in its rich panels.
    rich_markup_mode=None,
)
def _plain_argument_help() -> None:
    """Arguments in help as click writes them: ``FILE...`` when required, ``[FILE...]`` when not, with
    no type after the name (this typer writes ``{files}...`` and ``files... <list[Path]>``)."""
    from typer.core import TyperArgument

    if not hasattr(TyperArgument, "_usage_display_name"):  # another typer: its own help stands
        return

    def name(self) -> str:
        text = self.metavar or self.name.upper()
        if self.nargs != 1 and not text.endswith("..."):
            text += "..."
        return text

    TyperArgument._usage_display_name = lambda self: name(self) if self.required else f"[{name(self)}]"
    TyperArgument._rich_display_name = name
    TyperArgument.display_type_rich = lambda self, ctx: None


_plain_argument_help()

#: stdout for people: no markup (file names may hold brackets), no wrapping of long lines.
out = Console(soft_wrap=True, markup=False, highlight=False)
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgehema {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """edgehema: real-time RBC / PLT / reticulocyte event classification for hematology analyzers."""


class progress:
    """A progress bar on stderr when it is a terminal; silent otherwise (scripts, CI)."""

    def __init__(self, total: int):
        self.total = total
        self.bar = None

    def __enter__(self):
        if sys.stderr.isatty() and self.total > 1:
            from rich.progress import Progress

            self.bar = Progress(console=err, transient=True)
            self.bar.start()
            task = self.bar.add_task("classifying", total=self.total)
            return lambda: self.bar.advance(task)
        return lambda: None

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def open_output(path: Path, mode: str = "w"):
    """A results file, or one error line saying why it cannot be written (a folder, a missing folder)."""
    if path.is_dir():
        raise EdgehemaError(f"{path}: is a folder; name a file to write the results to")
    if not path.parent.is_dir():
        raise EdgehemaError(f"{path}: the folder {path.parent} does not exist")
    try:
        return open(path, mode, encoding="utf-8")
    except OSError as exc:
        raise EdgehemaError(f"{path}: cannot write: {exc.strerror}") from None


#: An error line is for a person: past this many characters it is cut (a file's content quoted in
#: a message can otherwise make it megabytes long).
MAX_ERROR = 600


def warn(message: str) -> None:
    """One line on stderr for something the user should know that does not stop the command."""
    sys.stderr.write(f"edgehema: warning: {' '.join(message.splitlines())[:MAX_ERROR]}\n")


def open_classifier(model, backend: str = "auto", adapt: bool = True):
    """The classifier a command counts with: its engine passed the bundle's known answer; an engine
    passed over (not installed, or failed the self-test) is one warning line each."""

    clf = Classifier(model, backend=backend, adapt=adapt)
    for line in clf.refused:
        warn(f"{clf.bundle.name}: {line}; counting on {clf.backend_name}")
    return clf


def error(message: str) -> None:
    # One line, no markup interpretation of file names.
    line = " ".join(message.splitlines())
    if len(line) > MAX_ERROR:
        line = line[:MAX_ERROR] + f"... ({len(line) - MAX_ERROR:,} more characters)"
    sys.stderr.write(f"edgehema: error: {line}\n")


def main() -> None:
    try:
        app()
    except EdgehemaError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("edgehema: interrupted\n")
        sys.exit(130)
