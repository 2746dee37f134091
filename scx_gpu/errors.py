"""Errors that end a command, each with the exit status it maps to.

Exit status 2 is bad input (the user can fix the command line), 1 is the
environment (missing tool, not root, kernel without a feature).
"""

EXIT_ENV = 1
EXIT_USAGE = 2


class ScxGpuError(Exception):
    """An error with a message meant for the user and an exit status."""

    exit_code = EXIT_ENV


class UsageError(ScxGpuError):
    """The command line or an input file is wrong."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(ScxGpuError):
    """The machine lacks something the command needs."""

    exit_code = EXIT_ENV
