"""Starting a local Ray in a process that may also host Pyserini's JVM.

HotSpot uses ``SIGSEGV`` (and ``SIGBUS``, ``SIGFPE``, ``SIGILL``) as ordinary control flow:
implicit null checks and safepoint polls fault on purpose, and the JVM's own handler
recovers. ``ray.init`` replaces those handlers in the driver process: Ray's CoreWorker
installs Abseil's failure-signal handler and Ray's ``connect`` enables Python's
``faulthandler``. After that, the next recoverable JVM fault kills the process. Here
this showed up as a "Segmentation fault" of the test suite in a BM25 test that ran after
a Ray test; it would hit ``rd`` runs too, which use BM25 and the Ray backend in one
process. Upstream: castorini/pyserini#1867, ray-project/ray#36415, and #58984. That last
one is the ``RAY_DISABLE_FAILURE_SIGNAL_HANDLER`` switch, which does not cover the
``faulthandler`` half.

So :func:`init_local` saves those four handlers before ``ray.init`` when a JVM is running
in this process, and puts them back afterwards; :func:`shutdown_local` does the same around
``ray.shutdown``, which resets SIGSEGV, SIGFPE and SIGILL to the default action (measured:
handler 0 after it; a clean-clone CI then died with "Segmentation fault" in a Java
ForkJoinPool thread of the next BM25 test). No library does this. Python's
:mod:`signal` can neither read nor set a C-level handler, so it is done with libc's
``sigaction`` through :mod:`ctypes`. Ray's workers are separate processes and are not
affected. The driver loses Ray's native crash report for a real segfault; the JVM's own
fatal-error report (``hs_err``) takes its place.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
from typing import Iterator

# the signals HotSpot handles itself (hotspot/os/posix/signals_posix.cpp)
JVM_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)


class _SigAction(ctypes.Structure):
    """glibc's ``struct sigaction`` on Linux (handler, 1024-bit mask, flags, restorer)."""

    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong)))),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def signal_handlers(signums=JVM_SIGNALS) -> dict[int, _SigAction]:
    """The current C-level ``sigaction`` of each signal in ``signums``.

    Raises:
        OSError: ``sigaction`` failed.
    """
    libc, out = _libc(), {}
    for s in signums:
        sa = _SigAction()
        if libc.sigaction(int(s), None, ctypes.byref(sa)) != 0:
            raise OSError(ctypes.get_errno(), f"sigaction({int(s)}) failed")
        out[int(s)] = sa
    return out


def restore_signal_handlers(saved: dict[int, _SigAction]) -> None:
    """Install the ``sigaction`` records ``saved`` (from :func:`signal_handlers`) again.

    Raises:
        OSError: ``sigaction`` failed.
    """
    libc = _libc()
    for s, sa in saved.items():
        if libc.sigaction(s, ctypes.byref(sa), None) != 0:
            raise OSError(ctypes.get_errno(), f"sigaction({s}) failed")


def jvm_running() -> bool:
    """Whether pyjnius has started a JVM in this process (without importing pyjnius)."""
    cfg = sys.modules.get("jnius_config")
    return bool(cfg is not None and getattr(cfg, "vm_running", False))


@contextlib.contextmanager
def jvm_handlers_kept() -> Iterator[None]:
    """Run the block, then put back the JVM's signal handlers as they were before it (when a
    JVM runs in this process; otherwise do nothing).

    Raises:
        OSError: ``sigaction`` failed.
    """
    saved = signal_handlers() if jvm_running() else None
    try:
        yield
    finally:
        if saved is not None:
            restore_signal_handlers(saved)


def init_local(**kwargs) -> None:
    """``ray.init(**kwargs)``, keeping the JVM's signal handlers when a JVM runs here (see
    the module docstring), with retries: Ray waits a fixed 30 s for its raylet, which a
    heavily loaded machine can miss ("The current node timed out during startup").

    Raises:
        whatever ``ray.init`` raises, after the third timed-out start.
    """
    import ray

    with jvm_handlers_kept():
        for attempt in range(3):
            try:
                ray.init(**kwargs)
                return
            except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception here
                if "timed out during startup" not in str(e) or attempt == 2:
                    raise
                ray.shutdown()


def shutdown_local() -> None:
    """``ray.shutdown()``, keeping the JVM's signal handlers when a JVM runs here (see the
    module docstring: Ray's shutdown leaves SIGSEGV, SIGFPE and SIGILL at their defaults).

    Raises:
        OSError: ``sigaction`` failed.
    """
    import ray

    with jvm_handlers_kept():
        ray.shutdown()
