"""The one exception type that reaches the user as a single line, not a traceback."""


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception (or of the one it wraps, as Hydra's
    instantiate does), for one-line error messages."""
    cause = exc.__cause__ or exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__


def unexpected(exc: BaseException, memory_hint: str, where: str) -> str:
    """The one line (exit status 1) for an exception no check foresaw: out of memory, with
    ``memory_hint`` (what to lower), or a bug, with ``where`` (where its traceback is)."""
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return f"error: out of memory ({first_line(exc)}); {memory_hint}"
    return f"error: {first_line(exc)} (an unexpected error; {where}, and please report it)"


class UserError(Exception):
    """Bad configuration, missing data, unusable device or checkpoint.

    The message must say what was wrong and how to fix it; the command line turns it into
    one line on stderr and a non-zero exit code.
    """


class NonFiniteError(UserError):
    """A loss term or gradient went NaN/Inf: the step it happened at and what it was."""

    def __init__(self, message: str, step: int, term: str):
        super().__init__(message)
        self.step, self.term = step, term


def traceback_to_files(heading: str = "") -> list[str]:
    """The current exception's traceback into the log files only (the run's train.log), not
    the console; returns those files' paths (none: no log file is open)."""
    import logging
    import traceback

    files = [h for h in logging.root.handlers if isinstance(h, logging.FileHandler)]
    text = traceback.format_exc()
    record = logging.getLogger("vae_train.traceback").makeRecord(
        "vae_train.traceback", logging.ERROR, __file__, 0,
        f"{heading}:\n{text}" if heading else text, None, None)
    for handler in files:
        handler.handle(record)
    return [h.baseFilename for h in files]
