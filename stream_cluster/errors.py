"""One error hierarchy: the library raises these (and built-ins); the CLI prints them in a line."""

from __future__ import annotations

__all__ = [
    "BudgetError",
    "CheckpointMismatchError",
    "ConfigError",
    "DecodeError",
    "DiskFullError",
    "InputError",
    "RunLockedError",
    "SourceChangedError",
    "StoreError",
    "StreamClusterError",
]


class StreamClusterError(Exception):
    """Base class of every error stream-cluster raises on purpose."""


class ConfigError(StreamClusterError, ValueError):
    """A setting is malformed or out of range; the message names it and what would work."""


class BudgetError(StreamClusterError, ValueError):
    """The memory budget cannot hold the planned work; the message gives the minimum that would."""


class InputError(StreamClusterError, ValueError):
    """The input folder cannot be used (missing, empty, too few images for the settings)."""


class CheckpointMismatchError(StreamClusterError):
    """A run folder was made with other settings or other inputs than the ones given now."""


class StoreError(StreamClusterError):
    """The on-disk store or a checkpoint is unreadable, torn or tampered with."""


class CorruptSegmentError(StoreError):
    """A complete store segment fails its checksum: the disk (or someone) changed it."""

    def __init__(self, message: str, segment: object = None, index: int = -1) -> None:
        super().__init__(message)
        self.segment = segment
        self.index = index


class RunLockedError(StreamClusterError):
    """Another stream-cluster process holds the run folder."""


class SourceChangedError(InputError):
    """An image read again (``--keep-pixels never``) no longer decodes as it did."""


class DiskFullError(StreamClusterError, OSError):
    """Writing to the run folder failed for lack of space."""


class DecodeError(StreamClusterError):
    """One image cannot be used; ``reason`` is the short, specific cause written to skipped.csv."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
