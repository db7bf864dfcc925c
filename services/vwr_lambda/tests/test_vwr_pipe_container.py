"""Reading a container's answers off its pipe in one go (``pipe_container.read_messages``)."""

from __future__ import annotations

import multiprocessing
import os
import struct
import threading

import pytest

from urr_vwr_lambda.local.pipe_container import read_messages


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
