"""Signals and child processes: SIGTERM handled like Ctrl-C, interrupts no library can swallow, workers that
die with their parent.

Light on purpose (``os``, ``signal``, ``threading`` only): the entry point imports it before anything heavy, so
that a Ctrl-C during start-up is already one line.

* :func:`install_cli_signal_handlers` (the CLI, while a command runs): SIGINT raises ``KeyboardInterrupt`` and
  SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` cleanup runs
  for both); both are also *recorded*, because h5py callbacks, ``__del__`` methods and atexit hooks print and
  drop exceptions raised inside them. :func:`raise_if_interrupted` re-raises a recorded interrupt: it is called
  before every commit (``iagcn.fsutil.atomic_path``, ``CacheWriter``) and after each step of a long loop, so an
  interrupt that a library swallowed still stops the command before anything appears under a final name.
  SIGXFSZ is ignored, so a write past ``ulimit -f`` fails with EFBIG (an error we report) instead of killing the
  process with a core dump. An interrupt that lands inside an import is raised as soon as the import is over,
  and an interrupted command that cannot unwind is ended after ``UNWIND_DEADLINE_S`` (one line, same status).
* :func:`worker_setup` (every worker process: DataLoader ``worker_init_fn``, ``multiprocessing.Pool``
  initializer): Ctrl-C is left to the parent (which stops its workers), SIGTERM kills, and the worker dies with
  its parent: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux plus a thread that watches the parent's pid (every
  platform with ``fork``). Forked children of the CLI get the signal part and the Linux part at fork time
  already (``os.register_at_fork``).
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Iterator

#: exit statuses of the CLI after Ctrl-C / SIGTERM (128 + signal number, as shells report them)
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C (same cleanup, same one-line message), exit status 143."""


_received: list[int] = []                # signals recorded by the CLI's handlers since the command started
_installed: dict[int, object] = {}       # signal -> previous handler, while the CLI's handlers are installed


_defer_depth = [0]                      # > 0 inside defer_interrupts()


#: seconds the command gets to unwind after an interrupt before it is ended anyway (see _on_alarm)
UNWIND_DEADLINE_S = float(os.environ.get("IAGCN_UNWIND_DEADLINE_S", "20"))
_RETRY_S = 0.05                          # how often a postponed interrupt looks again whether it may raise

_pending: list[int] = []                 # an interrupt postponed until the main thread has left importlib
_deadline: list[float] = []              # monotonic time after which the process is ended anyway
_devnull: list = []                      # faulthandler's output while its watchdog is armed


def _in_import(frame) -> bool:
    """True when ``frame`` runs inside an import (importlib's frames, or a module body executed by one).

    An exception raised there can leave importlib's locks taken or its tables inconsistent (measured: a
    ``KeyError`` traceback from importlib, and once a deadlock of the preflight's decoder threads on the import
    lock), so interrupts wait until the import is over.
    """
    depth = 0
    while frame is not None and depth < 300:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame, depth = frame.f_back, depth + 1
    return False


def _exception_for(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _arm_alarm(seconds: float) -> None:
    with contextlib.suppress(ValueError, OSError):
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))


def _start_deadline(signum: int) -> None:
    """Guarantee that an interrupted command ends. After ``UNWIND_DEADLINE_S`` the SIGALRM handler writes one line
    and exits with the signal's status; faulthandler's C watchdog (which needs neither the GIL's Python code nor
    any lock) ends the process 5 s later should even that handler not get to run. Normal unwinding disarms both
    (:func:`restore_signal_handlers`)."""
    if _deadline or not hasattr(signal, "setitimer"):
        return
    import faulthandler
    import time

    _deadline.append(time.monotonic() + UNWIND_DEADLINE_S)
    with contextlib.suppress(ValueError, OSError):
        signal.signal(signal.SIGALRM, _on_alarm)
        _devnull[:] = [open(os.devnull, "w")]  # noqa: SIM115 -- closed by _disarm_deadline
        faulthandler.dump_traceback_later(UNWIND_DEADLINE_S + 5, exit=True, file=_devnull[0])
    _arm_alarm(_RETRY_S if _pending else UNWIND_DEADLINE_S)


def _on_alarm(signum: int, frame) -> None:  # noqa: ARG001
    import time

    now = time.monotonic()
    if _deadline and now >= _deadline[0]:
        code = EXIT_SIGTERM if interrupt_received() == signal.SIGTERM else EXIT_SIGINT
        with contextlib.suppress(OSError):
            os.write(2, f"interrupted: stopping took over {UNWIND_DEADLINE_S:.0f} s, exiting now; completed work "
                        f"was kept, rerun the same command to resume\n".encode())
        os._exit(code)
    left = (_deadline[0] - now) if _deadline else UNWIND_DEADLINE_S
    if _pending and not _in_import(frame):
        sig = _pending.pop()
        _arm_alarm(left)
        raise _exception_for(sig)
    _arm_alarm(min(_RETRY_S, left) if _pending else left)


def _disarm_deadline() -> None:
    _pending.clear()
    _deadline.clear()
    if _devnull:
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        with contextlib.suppress(OSError):
            _devnull.pop().close()
    if hasattr(signal, "setitimer"):
        with contextlib.suppress(ValueError, OSError):
            signal.setitimer(signal.ITIMER_REAL, 0)


def _on_signal(signum: int, frame) -> None:
    _received.append(signum)
    if _defer_depth[0] > 0 and len(_received) == 1:
        _start_deadline(signum)
        return   # deferred: the next raise_if_interrupted() raises it (a second Ctrl-C raises at once)
    if _in_import(frame) and hasattr(signal, "setitimer"):
        _pending[:] = [signum]   # raised by _on_alarm as soon as the import is over
        _start_deadline(signum)
        _arm_alarm(_RETRY_S)
        return
    _start_deadline(signum)
    raise _exception_for(signum)


@contextlib.contextmanager
def defer_interrupts() -> Iterator[None]:
    """Inside the block a first Ctrl-C/SIGTERM is only recorded; call :func:`raise_if_interrupted` between steps.

    For code that runs inside h5py (and its weakref callbacks), where an exception raised by the handler would be
    printed as "Exception ignored in ..." and dropped. The interrupt takes effect at the next step boundary; the
    block raises it on exit at the latest. Without the CLI's handlers nothing is recorded and this changes nothing.
    """
    _defer_depth[0] += 1
    try:
        yield
    finally:
        _defer_depth[0] -= 1
    raise_if_interrupted()


def install_cli_signal_handlers() -> bool:
    """SIGINT/SIGTERM raise (and are recorded), SIGXFSZ is ignored. Main thread only.

    Returns True when this call installed them (the caller then restores them), False when they already were.
    """
    if threading.current_thread() is not threading.main_thread() or _installed:
        return False
    _received.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        _installed[sig] = signal.signal(sig, _on_signal)
    if hasattr(signal, "SIGXFSZ"):
        _installed[signal.SIGXFSZ] = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return True


def restore_signal_handlers() -> None:
    """Put back the handlers that were there before :func:`install_cli_signal_handlers`."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, previous in _installed.items():
        signal.signal(sig, previous)
    _installed.clear()
    _disarm_deadline()


def exit_quietly_on_signals() -> None:
    """After the command: a Ctrl-C/SIGTERM during interpreter shutdown exits at once, without a traceback."""
    if threading.current_thread() is not threading.main_thread():
        return
    _disarm_deadline()  # the command has unwound: no alarm may fire while the interpreter shuts down

    def handler(signum: int, frame) -> None:  # noqa: ARG001
        os._exit(EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def interrupt_received() -> int | None:
    """The last signal recorded by the CLI's handlers (SIGINT / SIGTERM), or None."""
    return _received[-1] if _received else None


def forget_interrupts() -> None:
    """The interrupt was reported: stop re-raising it."""
    _received.clear()
    _pending.clear()


def raise_if_interrupted() -> None:
    """Re-raise an interrupt that arrived, even if a library swallowed the exception it raised."""
    if _received:
        _pending.clear()   # raised here: the alarm must not raise it a second time during the cleanup
        raise _exception_for(_received[-1])


def exit_code_for(e: BaseException | None = None) -> int:
    """143 for SIGTERM, 130 for Ctrl-C: from the exception when it is one, else from the recorded signal."""
    if isinstance(e, KeyboardInterrupt):
        return EXIT_SIGTERM if isinstance(e, Terminated) else EXIT_SIGINT
    return EXIT_SIGTERM if interrupt_received() == signal.SIGTERM else EXIT_SIGINT


# -- worker processes ---------------------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def _set_parent_death_signal() -> bool:
    """Linux: the kernel sends SIGKILL to this process when its parent dies. False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, period_s: float) -> None:
    while True:
        if os.getppid() != parent:   # re-parented: the parent died (any platform, also where prctl is missing)
            os._exit(1)
        time.sleep(period_s)


def worker_setup(*_: object, period_s: float = 0.5) -> None:
    """Call first thing in every worker process (accepts a DataLoader worker id and ignores it).

    Ctrl-C: ignored (the parent receives it too, unwinds and stops its workers: no traceback per worker).
    SIGTERM: kills (the default). The worker dies with its parent, within ``period_s`` where prctl is missing.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = _fork_parent if _fork_parent is not None else os.getppid()
    _set_parent_death_signal()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent, period_s), name="iagcn-parent-watchdog", daemon=True).start()


_fork_parent: int | None = None   # the pid that forked this process (set in the parent just before fork)


def _before_fork() -> None:
    global _fork_parent
    _fork_parent = os.getpid()


def _after_fork_in_child() -> None:
    """A child forked while the CLI's handlers are installed is a worker: signals and prctl at once."""
    if not _installed:
        return
    _installed.clear()          # the child must not restore the parent's handlers
    _received.clear()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _set_parent_death_signal()
    if _fork_parent is not None and os.getppid() != _fork_parent:
        os._exit(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
