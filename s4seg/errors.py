"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class S4segError(Exception):
    """A problem the user can fix (bad input, bad config, missing file)."""


class ConfigError(S4segError):
    """A configuration key or value is wrong."""


class DatasetError(S4segError):
    """A data set on disk is missing, malformed or inconsistent."""


class CheckpointError(S4segError):
    """A checkpoint is unreadable, truncated, or of another kind/architecture."""


def first_line(error: BaseException | str) -> str:
    """The first line of an error's message (its type when it has none). Errors raised in data
    loader workers arrive wrapped with a traceback: their own message is kept."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if isinstance(error, BaseException) else ""
