"""User-facing error types: the CLI prints these as one clear line, without a traceback."""


class TBPSError(Exception):
    """An error caused by the user's input (data, config, paths), with a message that says the fix."""


class DataError(TBPSError):
    """A dataset folder, annotation file, record or image is missing or malformed."""


class ConfigError(TBPSError):
    """A configuration value is unknown, invalid or incompatible with another one."""


class NothingToDo(TBPSError):
    """The command has nothing to do (e.g. resuming a finished run): said, exit code 0."""

    exit_code = 0
