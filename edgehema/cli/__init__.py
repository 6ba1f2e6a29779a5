"""The ``edgehema`` command line (typer): one small module per command group.

``files`` (simulate, inspect), ``classify`` (classify, plot), ``evaluate``, ``validate``, ``stream`` (emulate,
stream, replay, demo), ``lis`` (outbox, lis-listen), ``smear`` (smear, evaluate-smear), ``models`` (export, models, info, profiles), ``signing`` (keygen, sign), ``fleet`` (reanalyze, rollout-report),
``train``; ``_app`` holds the application and what the commands share. Each command is a thin shell over the library.
"""

from edgehema.cli._app import app, main
from edgehema.cli import commands  # noqa: F401,E402 - registers every command on the app

__all__ = ["app", "main"]
