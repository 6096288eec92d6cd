"""Errors that reach a user as one line (the CLI prints ``error: <message>`` and exits 2)."""


class PrmforgeError(Exception):
    """A user-facing error: bad input, bad config, a missing optional component.

    The message is complete on its own (it names the file, line, field or key at fault);
    the CLI prints it without a traceback.
    """


class InputError(PrmforgeError):
    """A problem file or row that cannot be read."""


class ConfigError(PrmforgeError):
    """An invalid build configuration value."""
