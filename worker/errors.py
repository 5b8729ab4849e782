"""The project's exceptions: one base class, a few kinds a caller may catch."""


class WorkerError(Exception):
    """The worker could not do what was asked."""


class ConfigurationError(WorkerError):
    """A setting, option or stage map is invalid; the message says which and why."""


class StoreUnavailableError(WorkerError):
    """The item store cannot be reached or opened."""


class BadDocumentError(WorkerError):
    """A document cannot be read as a routing item."""


class StoreFailedError(WorkerError):
    """The store kept failing during a run, so the run stopped claiming."""
