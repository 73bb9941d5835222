"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class S4segError(Exception):
    """A problem the user can fix (bad input, bad config, missing file)."""


class ConfigError(S4segError):
    """A configuration key or value is wrong."""


class DatasetError(S4segError):
    """A data set on disk is missing, malformed or inconsistent."""


class CheckpointError(S4segError):
    """A checkpoint is unreadable, truncated, or of another kind/architecture."""
