"""The two CLI error kinds and the exit codes they map to in :func:`pathsegmentor.cli.main`."""
from __future__ import annotations


class UsageError(Exception):
    """Bad arguments or input: reported on stderr, exit code 2."""


class RunError(Exception):
    """A failure while running (weights, checkpoint, model): reported on stderr, exit code 1."""
