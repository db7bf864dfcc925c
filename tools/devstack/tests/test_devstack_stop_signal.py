"""A stop signal during start-up is a stop on request, whatever the step it landed in.

The handler only records the signal (no lock, no I/O, no exception thrown into whatever
code the main thread was running); the start-up checks it between steps and in its waits.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from urr_devstack import stack
from urr_devstack.infra import Infra
from urr_devstack.runstate import RUNFILE_NAME
from urr_devstack.settings import DevstackSettings


def _starting(fail_with: type[Exception] | None) -> Any:
    def start_infra(*args: Any, **kwargs: Any) -> Any:
        # The handler must return normally: nothing is raised into the step it landed in.
        signal.raise_signal(signal.SIGTERM)
        assert kwargs["cancelled"]() is True
        assert kwargs["escalate"]() is False
        if fail_with is not None:
            # What a step does when the stop cut it short (a server killed under it).
            raise fail_with("connection was closed in the middle of operation")
        return Infra("127.0.0.1", "redis://x", "postgresql://x", "x:1", "http://x")

    return start_infra


@pytest.mark.parametrize("fail_with", [None, ConnectionError])
def test_sigterm_while_starting_is_a_stop_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_with: type[Exception] | None
) -> None:
    monkeypatch.setattr(stack, "start_infra", _starting(fail_with))
    before = signal.getsignal(signal.SIGTERM)
    lines: list[str] = []
    settings = DevstackSettings(state_dir=tmp_path)
    assert stack.up(settings, no_services=True, out=lines.append) == 0
    assert lines[-1] == "urr-devstack: stopped on request while starting"
    # Provisioning never ran: the checkpoint after the servers stopped the start-up.
    assert not any("SQS queues" in line for line in lines)
    assert not (tmp_path / RUNFILE_NAME).exists()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_start_up_error_without_a_signal_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("postgres refused")

    monkeypatch.setattr(stack, "start_infra", broken)
    with pytest.raises(ConnectionError, match="postgres refused"):
        stack.up(DevstackSettings(state_dir=tmp_path), no_services=True, out=lambda _: None)
