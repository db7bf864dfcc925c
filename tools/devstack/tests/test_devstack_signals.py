"""The stop-signal record: the handler only records; one request, then an escalation."""

from __future__ import annotations

import signal
import time

import pytest

from urr_devstack.signals import Stopping, StopSignals


def test_signals_close_together_are_one_request_and_a_later_one_escalates() -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopSignals(escalate_after_s=0.2) as signals:
        assert signals.count == 0
        signals.checkpoint()  # nothing asked yet: no exception
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # relayed at once (make, uv): the same request
        assert (signals.requested, signals.escalated) == (True, False)
        assert signals.name == "SIGINT"
        with pytest.raises(Stopping, match="SIGINT"):
            signals.checkpoint()
        time.sleep(0.25)
        signal.raise_signal(signal.SIGTERM)  # a second Ctrl-C/SIGTERM: kill, do not drain
        assert signals.escalated
        assert signals.count == 3
    assert signal.getsignal(signal.SIGINT) is before


def test_the_handler_returns_normally_whatever_it_interrupts() -> None:
    """No exception is thrown into the interrupted code (it may hold a lock or be mid-write)."""
    with StopSignals() as signals:
        written = []
        for index in range(50):
            signal.raise_signal(signal.SIGTERM if index % 2 else signal.SIGINT)
            written.append(index)
        assert written == list(range(50))
        assert signals.count == 50
