"""The loader's stop flag: SIGTERM ends its wait at once, in any state."""

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from scx_gpu.controlplane.stopsignal import SIGNALS, StopSignal


@pytest.fixture
def stop() -> Iterator[StopSignal]:
    stop = StopSignal()
    with stop.installed():
        yield stop


def test_the_handlers_before_are_back_after():
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    with StopSignal().installed():
        assert all(signal.getsignal(sig) != h for sig, h in before.items())
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before
    assert signal.set_wakeup_fd(-1) == -1  # none left behind


def test_sigterm_ends_a_long_wait_at_once(stop):
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    began = time.monotonic()
    assert stop.wait(30.0)
    assert time.monotonic() - began < 5.0 and stop.is_set()


def test_signals_landing_amid_many_short_waits_all_end_them(stop):
    # The loop waits 5 ms at a time while a detector window is open: a signal
    # handled inside Event.wait() deadlocked the loader (Event.set() in the
    # handler waited for the lock wait() held). Nothing here takes a lock.
    sender = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    sender.start()
    began = time.monotonic()
    while not stop.wait(0.005):
        assert time.monotonic() - began < 10.0, "SIGINT did not stop the waits"
    sender.join()


def test_no_signal_no_stop(stop):
    assert not stop.wait(0.01) and not stop.is_set()
