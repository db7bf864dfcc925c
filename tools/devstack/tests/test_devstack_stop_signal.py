"""A stop signal during start-up is a stop on request, whatever the library it landed in."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from urr_devstack import stack
from urr_devstack.runstate import RUNFILE_NAME
from urr_devstack.settings import DevstackSettings


def _starting(raise_instead: type[Exception] | None) -> Any:
    def start_infra(*args: Any, **kwargs: Any) -> Any:
        try:
            signal.raise_signal(signal.SIGTERM)
        except stack.Stopping as exc:
            if raise_instead is None:
                raise
            # What asyncpg did when the signal landed in asyncio's socket write.
            raise raise_instead("connection was closed in the middle of operation") from exc
        raise AssertionError("the handler did not raise")

    return start_infra


@pytest.mark.parametrize("raise_instead", [None, ConnectionError])
def test_sigterm_while_starting_is_a_stop_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raise_instead: type[Exception] | None
) -> None:
    monkeypatch.setattr(stack, "start_infra", _starting(raise_instead))
    lines: list[str] = []
    settings = DevstackSettings(state_dir=tmp_path)
    assert stack.up(settings, no_services=True, out=lines.append) == 0
    assert lines[-1] == "urr-devstack: stopped on request while starting"
    assert not (tmp_path / RUNFILE_NAME).exists()


def test_a_start_up_error_without_a_signal_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("postgres refused")

    monkeypatch.setattr(stack, "start_infra", broken)
    with pytest.raises(ConnectionError, match="postgres refused"):
        stack.up(DevstackSettings(state_dir=tmp_path), no_services=True, out=lambda _: None)
