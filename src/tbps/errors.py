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


def one_line(error: Exception) -> str:
    """The user-facing message; errors re-raised from DataLoader workers carry a traceback."""
    message = str(error)
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message
