"""Errors a user can fix. The CLI prints these as one `error: ...` line (exit code 2)."""


class PanguError(Exception):
    """Base class: the message names the file, field or value and what would fix it."""


class ConfigError(PanguError, ValueError):
    """A configuration value is unknown, mistyped or out of range."""


class DataError(PanguError, ValueError):
    """A corpus, shard or manifest is missing, empty or inconsistent."""


class CheckpointError(PanguError, ValueError):
    """A checkpoint is missing, truncated, corrupt or does not fit the model."""
