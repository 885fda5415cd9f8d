"""Errors raised where the device would hang or lose a signal."""


class DeadlockError(RuntimeError):
    """Work waits for something nothing issued will provide: the device would hang here."""


class FlagMergeError(RuntimeError):
    """An ExternalEvent was recorded while an earlier record was not consumed: a signal is lost."""
