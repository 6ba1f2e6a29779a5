"""Every command module, imported in the order the commands are listed in ``--help``."""

from edgehema.cli import files, classify, evaluate, validate, stream, lis, smear, models, signing, train, fleet  # noqa: F401
