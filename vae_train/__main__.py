"""``python -m vae_train``: :func:`vae_train.train.main`, then a quick exit.

A process that has imported torch spends 0.4-0.7 s at its end letting the interpreter free its
modules object by object (``python -c "import torch"`` takes 1.7 s here, 1.3 s of it before the
teardown). Once the run is over nothing of that is needed: the exit handlers are run (the log
files are flushed and closed, a logger's ``atexit`` work is done), the standard streams are
flushed, and the process ends with the run's exit status. Where another (non-daemon) thread is
still running, the interpreter's own exit is kept, since it waits for such threads; so it is
under a profiler or a debugger (``python -m cProfile -m vae_train`` writes its output after
the command returns).
"""

from __future__ import annotations

import os
import sys
import threading

from vae_train.train import main


def exit_status(code) -> int:
    """The exit status ``SystemExit(code)`` gives (None: 0; an int; anything else is printed
    to stderr and gives 1, as the interpreter does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def quick_exit(status: int) -> None:
    """End the process now, without the interpreter's teardown; returns (and so leaves the
    ending to the interpreter) where another non-daemon thread is alive, a profiler or a
    debugger is attached, or the exit handlers cannot be run here."""
    import atexit

    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if others or run_exit_handlers is None or sys.getprofile() or sys.gettrace():
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed pipe: nothing more can be said
            pass
    os._exit(status)


def run() -> None:
    """The command line: train, then end the process quickly with the run's exit status."""
    try:
        main()
        status = 0
    except SystemExit as e:
        status = exit_status(e.code)
    quick_exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
