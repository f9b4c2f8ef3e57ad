"""Stopping a running phase: Ctrl-C and SIGTERM (``ray job stop``) both end ``tuner.fit()`` gracefully,
so finished trials and Tune's experiment state are saved and a re-run resumes."""

from __future__ import annotations

import logging
import os
import signal
import threading

_QUIET_ON_STOP = ("ray", "ray.tune", "ray.train")  # loggers that would add lines to the CLI's one


class _Stop:
    """Ctrl-C or SIGTERM (``ray job stop``) during ``tuner.fit()``: the first one stops Tune gracefully
    (running trials stopped, experiment state saved, so a re-run resumes) and keeps Tune's warnings
    about it off stderr, where the CLI's one line follows; a second one aborts the saving."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, sig: int, frame) -> None:
        tune_stop = signal.getsignal(signal.SIGUSR1)  # Tune's own graceful stop, installed by this fit()
        if self.requested or not callable(tune_stop):
            raise KeyboardInterrupt
        self.requested = True
        for name in _QUIET_ON_STOP:
            logging.getLogger(name).setLevel(logging.ERROR)
        tune_stop(signal.SIGUSR1, frame)


def fit_or_stop(tuner):
    """``tuner.fit()`` that tells whether it ended because of Ctrl-C or SIGTERM.

    Tune's own SIGINT handler is turned off (it logs three warnings and ignores SIGTERM): ours takes
    both signals and calls what Tune's would, its SIGUSR1 handler. SIGUSR1 is reset first, so a
    handler left by an earlier phase's fit() is never mistaken for this one's.
    """
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), False
    stop, disabled = _Stop(), os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    term, usr1 = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    levels = {name: logging.getLogger(name).level for name in _QUIET_ON_STOP}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        grid = tuner.fit()
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig, handler in ((signal.SIGTERM, term), (signal.SIGUSR1, usr1)):
            if handler is not None:
                signal.signal(sig, handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if disabled is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = disabled
    return grid, stop.requested
