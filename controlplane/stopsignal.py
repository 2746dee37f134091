"""SIGINT and SIGTERM as a stop flag that the loader's loop waits on.

A Python signal handler runs in the main thread between two bytecodes, so
it must take no lock that the interrupted code may hold: Event.set() from
the handler deadlocked when SIGTERM landed inside the loop's Event.wait()
(the handler waited for the Condition lock that wait() was taking back),
and the loader never exited. Here the handler only sets a flag, and the
interpreter's wakeup fd (written by its C-level handler) ends the wait.
"""

import contextlib
import select
import signal
import socket
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal:
    def __init__(self) -> None:
        self._stopped = False
        self._wake, self._wakeup = socket.socketpair()
        for end in (self._wake, self._wakeup):
            end.setblocking(False)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """From the main thread: SIGINT and SIGTERM set the flag for the body's
        duration; the handlers and wakeup fd before are restored after."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        wakeup = signal.set_wakeup_fd(self._wakeup.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopped = True

    def is_set(self) -> bool:
        return self._stopped

    def wait(self, timeout: float) -> bool:
        """Until a stop signal or timeout seconds; whether one came."""
        if not self._stopped:
            select.select([self._wake], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                self._wake.recv(4096)
        return self._stopped
