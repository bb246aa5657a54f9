"""The errors jaxmnist raises for bad input: each names the problem and the fix.

The CLI prints them as one paragraph and exits with status 2; library callers can catch
`JaxMnistError` to handle every one of them.
"""


class JaxMnistError(Exception):
    """Base class: a problem with the user's input, not a bug in jaxmnist."""


class DataError(JaxMnistError):
    """Missing, corrupt, or unreachable dataset files."""


class ConfigError(JaxMnistError):
    """An impossible or unknown run configuration."""


class CheckpointError(JaxMnistError):
    """A damaged, incomplete or unreadable checkpoint: it is refused by name, never evaluated."""


class FolderInUse(JaxMnistError):
    """Another process is writing the run folder (one writer per folder)."""


class Diverged(JaxMnistError):
    """The loss became non-finite: the run stopped (the CLI exits with status 3)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped the run at a chunk boundary; the message says what was saved."""
