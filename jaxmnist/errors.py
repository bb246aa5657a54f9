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
