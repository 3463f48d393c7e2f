"""The error taxonomy: every failure is classified where it happens, and retry policy acts on the
class, never on message text."""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    DATA = "data"  # the file is bad: permanent, never retried
    CONFIG = "config"  # config or base model is bad: permanent until the operator fixes it
    OOM = "oom"  # GPU or host memory: retried down the OOM ladder
    DEVICE = "device"  # GPU fault / CUDA error: retried after a delay
    TRANSIENT = "transient"  # I/O error, vanished mount: retried with backoff
    DISK_FULL = "disk_full"  # ENOSPC: queue paused, attempt not charged
    DIVERGED = "diverged"  # NaN/inf beyond the bounded learning-rate rollbacks
    BUG = "bug"  # an exception in our code: reported with traceback, not retried
    INTERRUPTED = "interrupted"  # stopped on request after a checkpoint: requeued, not charged


PERMANENT = frozenset({ErrorClass.DATA, ErrorClass.CONFIG, ErrorClass.DIVERGED, ErrorClass.BUG})

# Worker exit codes, one per class; the JSON report is the source of truth, the code a fallback.
EXIT_CODES: dict[ErrorClass, int] = {
    ErrorClass.DATA: 10,
    ErrorClass.CONFIG: 11,
    ErrorClass.OOM: 12,
    ErrorClass.DEVICE: 13,
    ErrorClass.TRANSIENT: 14,
    ErrorClass.DISK_FULL: 15,
    ErrorClass.DIVERGED: 16,
    ErrorClass.BUG: 17,
    ErrorClass.INTERRUPTED: 18,
}
CLASS_BY_EXIT: dict[int, ErrorClass] = {code: cls for cls, code in EXIT_CODES.items()}


class TrainconsoleError(Exception):
    """An expected failure: carries its class and, where one applies, the memo's case number."""

    error_class: ErrorClass = ErrorClass.BUG

    def __init__(self, message: str, *, case: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.case = case


class DataError(TrainconsoleError):
    error_class = ErrorClass.DATA


class ConfigError(TrainconsoleError):
    error_class = ErrorClass.CONFIG


class ResourceError(TrainconsoleError):
    error_class = ErrorClass.OOM


class DeviceError(TrainconsoleError):
    error_class = ErrorClass.DEVICE


class TransientError(TrainconsoleError):
    error_class = ErrorClass.TRANSIENT


class DiskFullError(TrainconsoleError):
    error_class = ErrorClass.DISK_FULL


class DivergedError(TrainconsoleError):
    error_class = ErrorClass.DIVERGED


class UsageError(TrainconsoleError):
    """A command-line mistake: exit code 2."""

    error_class = ErrorClass.CONFIG
