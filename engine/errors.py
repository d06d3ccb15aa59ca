"""Named exceptions raised by the engine.

Every error carries the offending value in its message so that the CLI and the studio can
show it to the user as one readable sentence. The engine never calls ``sys.exit``.
"""

from __future__ import annotations


class StudioError(Exception):
    """Base class of every error the engine raises on purpose (user-facing message)."""


class ProjectNotFoundError(StudioError):
    """The project file does not exist and creation was not requested."""


class ProjectLockedError(StudioError):
    """Another process holds the project's DuckDB file read-write."""


class SchemaVersionError(StudioError):
    """The project was written by an incompatible version of the studio."""


class DatasetError(StudioError):
    """An image folder cannot be imported (no classes, no valid image, ...)."""


class NotFoundError(StudioError):
    """A row (dataset, model, selection, ...) named by the user does not exist."""


class InvalidConfigError(StudioError):
    """A configuration value is out of range or inconsistent."""


class NotReadyError(StudioError):
    """A stage was asked to run before what it needs exists (e.g. an untrained model)."""


class WeightsNotFoundError(StudioError):
    """Pretrained weights are missing and cannot be downloaded (offline)."""


class JobError(StudioError):
    """A background job failed, was cancelled, or cannot be started."""


class Cancelled(StudioError):
    """Raised inside an engine loop when its cancel token is set."""


class SplitLeakError(StudioError):
    """A choice tried to read the test split before the final report (``engine.recipe``)."""
