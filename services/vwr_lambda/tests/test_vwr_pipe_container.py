"""Reading a container's answers off its pipe in one go (``pipe_container.read_messages``),
and the container's own loop (``pipe_container.serve``) run on a thread against a pipe."""

from __future__ import annotations

import multiprocessing
import operator
import os
import pickle
import struct
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest

from urr_vwr_lambda.local.pipe_container import read_messages, serve


@pytest.mark.parametrize("size", [0, 1, 3000, 65536, 300_000])
def test_reads_what_send_bytes_wrote(size: int) -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    payload = os.urandom(size)
    # A message larger than the pipe's buffer is written while it is read.
    sender = threading.Thread(target=writer.send_bytes, args=(payload,))
    sender.start()
    try:
        assert read_messages(reader.fileno()) == ([payload], b"")
    finally:
        sender.join()
        reader.close()
        writer.close()


def test_every_whole_message_waiting_is_read_and_a_partial_one_kept() -> None:
    reader, writer = multiprocessing.Pipe(duplex=False)
    writer.send_bytes(b"first")
    writer.send_bytes(b"")
    writer.send_bytes(b"third" * 1000)
    os.write(writer.fileno(), struct.pack("!i", 6) + b"fou")  # the next one, begun
    messages, pending = read_messages(reader.fileno())
    assert messages == [b"first", b"", b"third" * 1000]
    assert pending == struct.pack("!i", 6) + b"fou"
    os.write(writer.fileno(), b"rth")
    assert read_messages(reader.fileno(), pending) == ([b"fourth"], b"")
    reader.close()
    writer.close()


def test_a_length_over_2_gib_is_read_from_8_bytes() -> None:
    """``send_bytes`` writes -1 and an 8-byte length then: the framing is followed."""
    read_end, write_end = os.pipe()
    os.write(write_end, struct.pack("!i", -1) + struct.pack("!Q", 3) + b"abc")
    assert read_messages(read_end) == ([b"abc"], b"")
    os.close(read_end)
    os.close(write_end)


def test_header_and_body_arriving_in_pieces() -> None:
    read_end, write_end = os.pipe()

    def dribble() -> None:
        for byte in struct.pack("!i", 4) + b"wxyz":
            os.write(write_end, bytes([byte]))

    sender = threading.Thread(target=dribble)
    sender.start()
    assert read_messages(read_end) == ([b"wxyz"], b"")
    sender.join()
    os.close(read_end)
    os.close(write_end)


@pytest.mark.parametrize("written", [b"", b"\x00\x00", struct.pack("!i", 10) + b"short"])
def test_the_end_of_the_pipe_is_eof(written: bytes) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, written)
    os.close(write_end)
    with pytest.raises(EOFError):
        read_messages(read_end)
    os.close(read_end)


@pytest.fixture
def served() -> Iterator[Connection]:
    """The emulator's end of a pipe whose other end ``serve`` reads on a thread."""
    parent, child = multiprocessing.Pipe()
    loop = threading.Thread(target=serve, args=(child, None), daemon=True)
    loop.start()
    yield parent
    parent.close()
    loop.join(10)
    assert not loop.is_alive(), "serve must end when the emulator's end closes"
    child.close()


def _call(conn: Connection, fn: Any, *args: Any) -> tuple[bool, Any]:
    conn.send_bytes(pickle.dumps((fn, args, {}), pickle.HIGHEST_PROTOCOL))
    answer: tuple[bool, Any] = conn.recv()  # as PipeContainer reads it
    return answer


def test_serve_answers_results_and_exceptions_and_keeps_serving(served: Connection) -> None:
    assert _call(served, operator.add, 2, 3) == (True, 5)
    ok, error = _call(served, operator.truediv, 1, 0)
    assert not ok
    assert isinstance(error, ZeroDivisionError)
    # An answer that cannot be pickled is a RuntimeError naming why, not a dead container.
    ok, error = _call(served, threading.Lock)
    assert not ok
    assert isinstance(error, RuntimeError)
    assert "could not be sent" in str(error)
    assert _call(served, operator.mul, 6, 7) == (True, 42)


def test_serve_reads_a_call_bigger_than_the_pipe_and_answers_one(served: Connection) -> None:
    big = "x" * 300_000
    sender = threading.Thread(
        target=served.send_bytes,
        args=(pickle.dumps((operator.add, (big, "y"), {}), pickle.HIGHEST_PROTOCOL),),
    )
    sender.start()
    raw = served.recv_bytes()
    sender.join()
    assert pickle.loads(raw) == (True, big + "y")  # noqa: S301 - our own thread


def test_serve_answers_calls_written_together_in_order(served: Connection) -> None:
    """Two calls in one write (read in one go) are both run, in order; keyword arguments too."""
    first = pickle.dumps((operator.add, (1, 2), {}), pickle.HIGHEST_PROTOCOL)
    second = pickle.dumps((int, ("ff",), {"base": 16}), pickle.HIGHEST_PROTOCOL)
    framed = b"".join(struct.pack("!i", len(m)) + m for m in (first, second))
    os.write(served.fileno(), framed)
    assert served.recv() == (True, 3)
    assert served.recv() == (True, 255)


def test_serve_stops_on_none_without_answering() -> None:
    parent, child = multiprocessing.Pipe()
    loop = threading.Thread(target=serve, args=(child, None), daemon=True)
    loop.start()
    parent.send(None)  # as the containers' shutdown sends it
    loop.join(10)
    assert not loop.is_alive()
    assert not parent.poll(0.1)
    parent.close()
    child.close()


_INITIALIZED: list[str] = []


def _initialized() -> list[str]:
    return list(_INITIALIZED)


def test_serve_runs_its_initializer_before_the_first_call() -> None:
    parent, child = multiprocessing.Pipe()
    _INITIALIZED.clear()
    loop = threading.Thread(
        target=serve, args=(child, lambda: _INITIALIZED.append("init")), daemon=True
    )
    loop.start()
    assert _call(parent, _initialized) == (True, ["init"])
    parent.close()
    loop.join(10)
    child.close()


def test_serve_stops_quietly_when_the_emulator_left_before_the_answer() -> None:
    parent, child = multiprocessing.Pipe()
    parent.send_bytes(pickle.dumps((operator.add, (1, 1), {}), pickle.HIGHEST_PROTOCOL))
    parent.close()  # gone before the answer is written: the write fails, serve returns
    serve(child, None)
    child.close()
