"""A cheap, precise open-loop HTTP/1.1 load generator for the check-API bench.

Two processes share ``connections`` keep-alive sockets (connected first, then forked):

* the **sender** sends request ``k`` at its due time ``t0 + k / rate`` (evenly spaced, not in
  bursts), on connection ``k % connections``, whatever the answers do. It does nothing else:
  no event loop, no parsing, the request bytes built before the clock starts; it sleeps with
  ``time.sleep`` (nanosecond ``clock_nanosleep``) after lowering its timer slack to 1 µs, so
  it wakes within tens of µs of a due time instead of the 1 ms an event loop's timers give.
  It records when each request actually left (``lag`` = sent - due);
* the **receiver** reads the answers and takes each one's arrival time from the **kernel's
  receive timestamp** (``SO_TIMESTAMPNS``), so its own scheduling delays (it shares two cores
  with the server and Redis) are not counted as the server's. Answers on a connection come
  back in order, and connection ``c`` carries requests ``c, c + C, c + 2C, ...``, so answer
  ``n`` of connection ``c`` is request ``c + n x C`` and needs nothing from the sender.

Latency is measured from the **due** time (no coordinated omission: a request the sender
sent late, or that queued behind a slow answer on its connection, counts all of it), and
also, for the reader, from the actual send (``after send``: the server, Redis and the
loopback only). A request due while the previous one on its connection is unanswered is
sent anyway (HTTP/1.1 pipelining, which the check listener answers in order): the schedule
never waits for the server.

Clocks: due, sent and kernel timestamps are all ``CLOCK_REALTIME`` (the one the kernel
stamps with), read within one run of a few seconds.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import random
import select
import socket
import struct
import time
from array import array
from dataclasses import dataclass

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
_PR_SET_TIMERSLACK = 29
_ANCILLARY = socket.CMSG_SPACE(16)


@dataclass
class Measured:
    """One generator run: per request (index = request number) due, sent and answered."""

    due: array[float]  # seconds, CLOCK_REALTIME
    sent: array[float]
    answered: array[float]  # 0.0: never answered
    non_200: int
    sender_cpu_s: float
    receiver_cpu_s: float


def _low_timer_slack() -> None:
    """Sleeps end within ~1 µs of their deadline instead of the default 50 µs slack."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the default slack only blurs the lag
        pass


def _pin(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def due_times(
    total: int, rate: float, t0: float, tick_s: float, poisson: bool = False
) -> array[float]:
    """Request ``k``'s due time: ``t0 + k / rate``, or with ``tick_s`` the start of its tick
    (``rate x tick_s`` requests due together at each tick: bursts, as a 1 ms timer sends),
    or with ``poisson`` independent arrivals at that mean rate (exponential gaps, a fixed
    seed: the natural bursts of many independent callers)."""
    if poisson:
        draw = random.Random(17).expovariate
        due: array[float] = array("d", bytes(8 * total))
        at = t0
        for k in range(total):
            due[k] = at
            at += draw(rate)
        return due
    if tick_s <= 0:
        return array("d", (t0 + k / rate for k in range(total)))
    per_tick = rate * tick_s
    return array("d", (t0 + (k // per_tick) * tick_s for k in range(total)))


def _sender(
    socks: list[socket.socket],
    payloads: list[bytes],
    due: array[float],
    pipe: multiprocessing.connection.Connection,
    cpus: set[int] | None,
) -> None:
    _pin(cpus)
    _low_timer_slack()
    total = len(payloads)
    count = len(socks)
    sent = array("d", bytes(8 * total))
    clock = time.time
    sleep = time.sleep
    cpu = time.process_time()
    for k in range(total):
        wait = due[k] - clock()
        if wait > 0:
            sleep(wait)
        sent[k] = clock()
        socks[k % count].send(payloads[k])
    pipe.send_bytes(sent.tobytes())
    pipe.send(time.process_time() - cpu)
    pipe.close()


def _kernel_stamp(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time of a read (now, when it gave none)."""
    for level, kind, stamp in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanos = struct.unpack("qq", stamp[:16])
            return float(seconds + nanos * 1e-9)
    return time.time()


def split_answers(buffer: bytes) -> tuple[bytes, list[bytes]]:
    """The status codes of the complete answers at the start of ``buffer``, and the rest."""
    statuses = []
    while (end := buffer.find(b"\r\n\r\n")) >= 0:
        at_length = buffer.find(b"Content-Length:", 0, end)
        if at_length < 0:
            at_length = buffer.lower().find(b"content-length:", 0, end)
        length = int(buffer[at_length + 15 : buffer.find(b"\r\n", at_length)])
        if len(buffer) < end + 4 + length:
            break
        statuses.append(buffer[9:12])
        buffer = buffer[end + 4 + length :]
    return buffer, statuses


def _receiver(
    socks: list[socket.socket],
    total: int,
    t0: float,
    rate: float,
    timeout_s: float,
    poll_s: float,
    pipe: multiprocessing.connection.Connection,
    cpus: set[int] | None,
) -> None:
    _pin(cpus)
    _low_timer_slack()
    count = len(socks)
    answered = array("d", bytes(8 * total))
    by_fd = {sock.fileno(): (index, sock) for index, sock in enumerate(socks)}
    buffers = [b""] * count
    answers = [0] * count
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    done = 0
    non_200 = 0
    cpu = time.process_time()
    deadline = t0 + total / rate + timeout_s
    while done < total and time.time() < deadline:
        if poll_s > 0:
            # Woken once per poll_s, not per answer: fewer wake-ups competing with the
            # server and Redis for the cores. The kernel stamp of a read holding several
            # answers is its last one's, so the earlier ones count late (the safe side).
            time.sleep(poll_s)
        for fd, _ in poller.poll(0 if poll_s > 0 else 0.1):
            conn, sock = by_fd[fd]
            data, ancillary, _, _ = sock.recvmsg(65536, _ANCILLARY)
            if not data:
                poller.unregister(fd)
                continue
            buffer, statuses = split_answers(buffers[conn] + data)
            at = _kernel_stamp(ancillary)
            for status in statuses:
                if status != b"200":
                    non_200 += 1
                index = conn + answers[conn] * count
                answers[conn] += 1
                if index < total:
                    answered[index] = at
                    done += 1
            buffers[conn] = buffer
    pipe.send_bytes(answered.tobytes())
    pipe.send((non_200, time.process_time() - cpu))
    pipe.close()


def run(
    port: int,
    payloads: list[bytes],
    rate: float,
    connections: int,
    *,
    cpus: set[int] | None = None,
    tick_s: float = 0.0,
    poll_s: float = 0.0,
    poisson: bool = False,
    timeout_s: float = 10.0,
) -> Measured:
    """Send ``payloads`` (one request each, in order) to ``127.0.0.1:port`` at ``rate``
    per second over ``connections`` keep-alive connections. ``cpus``: pin both generator
    processes to these CPUs; ``tick_s``: requests due in bursts per tick (0: evenly
    spaced); ``poll_s``: the receiver reads every ``poll_s`` instead of on every answer;
    ``poisson``: exponential gaps at that mean rate instead of even ones."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        socks.append(sock)
    total = len(payloads)
    context = multiprocessing.get_context("fork")
    t0 = time.time() + 0.2  # both processes started and pinned before the first due time
    sender_end, sender_pipe = context.Pipe(duplex=False)
    receiver_end, receiver_pipe = context.Pipe(duplex=False)
    due = due_times(total, rate, t0, tick_s, poisson)
    receiver = context.Process(
        target=_receiver, args=(socks, total, t0, rate, timeout_s, poll_s, receiver_pipe, cpus)
    )
    sender = context.Process(target=_sender, args=(socks, payloads, due, sender_pipe, cpus))
    receiver.start()
    sender.start()
    sender_pipe.close()
    receiver_pipe.close()
    sent = array("d")
    sent.frombytes(sender_end.recv_bytes())
    sender_cpu = sender_end.recv()
    answered = array("d")
    answered.frombytes(receiver_end.recv_bytes())
    non_200, receiver_cpu = receiver_end.recv()
    sender.join()
    receiver.join()
    for sock in socks:
        sock.close()
    return Measured(due, sent, answered, non_200, sender_cpu, receiver_cpu)
