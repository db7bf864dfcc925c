"""The admission log in PostgreSQL: appends in one transaction per batch, roots and proofs.

One row per leaf and one per complete subtree (``tree.py``), so an append writes a leaf and
at most log2(n) nodes, and a root or proof reads O(log n) nodes in one query. Appends to one
event take a row lock on its size, so concurrent appenders queue instead of racing for an
index; a record already appended (same ``record_id``) is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING, Any, TypeAlias

from urr_admission_log.tree import (
    Node,
    Range,
    completed_by_append,
    consistency_ranges,
    inclusion_ranges,
    nodes_of,
)
from urr_common.migrations import Migration, apply_migrations, discover
from urr_verify.merkle import EMPTY_ROOT, leaf_hash, node_hash

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

COMPONENT = "admission_log"


# Both lookups probe an index once per wanted row, whatever the table statistics say. Written
# as ``record_id = ANY($2)`` and ``(level, idx) IN (SELECT * FROM unnest(...))``, PostgreSQL
# planned them as scans of all the event's entries or nodes once the log was a few hundred
# thousand leaves long: every append and every proof cost O(size). A LATERAL subquery with
# LIMIT 1 cannot be flattened into such a join (bench/admission_log_store.py, the plans are
# checked by tests/test_log_store.py).
SEEN_RECORDS_SQL = (
    "SELECT wanted.record_id FROM unnest($2::text[]) AS wanted(record_id)"
    " CROSS JOIN LATERAL (SELECT 1 FROM admission_log_entries e"
    " WHERE e.event_id = $1 AND e.record_id = wanted.record_id LIMIT 1) AS hit"
)
STORED_NODES_SQL = (
    "SELECT wanted.level, wanted.idx, hit.hash"
    " FROM unnest($2::smallint[], $3::bigint[]) AS wanted(level, idx)"
    " CROSS JOIN LATERAL (SELECT n.hash FROM admission_log_nodes n WHERE n.event_id = $1"
    " AND n.level = wanted.level AND n.idx = wanted.idx LIMIT 1) AS hit"
)


def log_migrations() -> list[Migration]:
    return discover(files("urr_admission_log") / "migrations")


async def migrate(pool: asyncpg.Pool) -> list[str]:
    return await apply_migrations(pool, COMPONENT, log_migrations())


class OutOfRange(ValueError):
    """A request names leaves or sizes the log does not have (yet)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One leaf to append: its canonical bytes and the id that makes appending idempotent."""

    record_id: str
    leaf: bytes
    #: The ticket of an admission leaf (what ``/receipt?ticket=`` finds it by); else None.
    ticket: int | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    first_index: int
    count: int
    size: int


async def size_of(conn: Connection, event_id: str) -> int:
    size = await conn.fetchval("SELECT size FROM admission_log_sizes WHERE event_id = $1", event_id)
    return int(size or 0)


async def _nodes(conn: Connection, event_id: str, wanted: Iterable[Node]) -> dict[Node, bytes]:
    unique = list(dict.fromkeys(wanted))
    if not unique:
        return {}
    rows = await conn.fetch(
        STORED_NODES_SQL,
        event_id,
        [level for level, _ in unique],
        [index for _, index in unique],
    )
    found = {(row["level"], row["idx"]): bytes(row["hash"]) for row in rows}
    missing = [node for node in unique if node not in found]
    if missing:
        raise RuntimeError(f"admission log {event_id!r} lacks stored nodes {missing[:3]}")
    return found


def _fold(nodes: Sequence[Node], hashes: dict[Node, bytes]) -> bytes:
    result = hashes[nodes[-1]]
    for node in reversed(nodes[:-1]):
        result = node_hash(hashes[node], result)
    return result


async def append(conn: Connection, event_id: str, records: Sequence[Record]) -> Appended:
    """Append the records not appended before, in order; one transaction."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO admission_log_sizes (event_id) VALUES ($1) ON CONFLICT DO NOTHING",
            event_id,
        )
        size = int(
            await conn.fetchval(
                "SELECT size FROM admission_log_sizes WHERE event_id = $1 FOR UPDATE", event_id
            )
        )
        seen = {
            row["record_id"]
            for row in await conn.fetch(
                SEEN_RECORDS_SQL,
                event_id,
                [record.record_id for record in records],
            )
        }
        fresh: list[Record] = []
        for record in records:
            if record.record_id not in seen:
                seen.add(record.record_id)
                fresh.append(record)
        if not fresh:
            return Appended(size, 0, size)
        # The frontier: complete subtrees of the current log that new nodes will pair with.
        hashes = await _nodes(conn, event_id, nodes_of(Range(0, size)) if size else [])
        new_nodes: list[tuple[int, int, bytes]] = []
        for offset, record in enumerate(fresh):
            completed = completed_by_append(size + offset + 1)
            hashes[completed[0]] = leaf_hash(record.leaf)
            for level, index in completed[1:]:
                left, right = hashes[(level - 1, 2 * index)], hashes[(level - 1, 2 * index + 1)]
                hashes[(level, index)] = node_hash(left, right)
            new_nodes += [(level, index, hashes[(level, index)]) for level, index in completed]
        await conn.execute(
            "INSERT INTO admission_log_entries (event_id, idx, leaf, record_id, admitted_ticket)"
            " SELECT $1, * FROM unnest($2::bigint[], $3::bytea[], $4::text[], $5::bigint[])",
            event_id,
            list(range(size, size + len(fresh))),
            [record.leaf for record in fresh],
            [record.record_id for record in fresh],
            [record.ticket for record in fresh],
        )
        await conn.execute(
            "INSERT INTO admission_log_nodes (event_id, level, idx, hash)"
            " SELECT $1, * FROM unnest($2::smallint[], $3::bigint[], $4::bytea[])",
            event_id,
            [level for level, _, _ in new_nodes],
            [index for _, index, _ in new_nodes],
            [digest for _, _, digest in new_nodes],
        )
        new_size = size + len(fresh)
        await conn.execute(
            "UPDATE admission_log_sizes SET size = $2 WHERE event_id = $1", event_id, new_size
        )
    return Appended(size, len(fresh), new_size)


async def _check_size(conn: Connection, event_id: str, size: int) -> None:
    have = await size_of(conn, event_id)
    if size > have:
        raise OutOfRange(f"the log of {event_id!r} has {have} entries, not {size}")


async def root(conn: Connection, event_id: str, size: int) -> bytes:
    if size == 0:
        return EMPTY_ROOT
    await _check_size(conn, event_id, size)
    nodes = nodes_of(Range(0, size))
    return _fold(nodes, await _nodes(conn, event_id, nodes))


async def _range_hashes(conn: Connection, event_id: str, ranges: Sequence[Range]) -> list[bytes]:
    per_range = [nodes_of(leaves) for leaves in ranges]
    hashes = await _nodes(conn, event_id, (node for nodes in per_range for node in nodes))
    return [_fold(nodes, hashes) for nodes in per_range]


async def inclusion_proof(conn: Connection, event_id: str, index: int, size: int) -> list[bytes]:
    if not 0 <= index < size:
        raise OutOfRange(f"leaf {index} is outside a tree of size {size}")
    await _check_size(conn, event_id, size)
    return await _range_hashes(conn, event_id, inclusion_ranges(index, size))


async def consistency_proof(conn: Connection, event_id: str, old: int, new: int) -> list[bytes]:
    if not 0 <= old <= new:
        raise OutOfRange(f"no consistency proof from size {old} to size {new}")
    await _check_size(conn, event_id, new)
    if old in (0, new):
        return []
    return await _range_hashes(conn, event_id, consistency_ranges(old, new))


async def entries(conn: Connection, event_id: str, start: int, end: int) -> list[bytes]:
    """Leaves ``[start, end)``; the caller bounds the range."""
    rows = await conn.fetch(
        "SELECT leaf FROM admission_log_entries WHERE event_id = $1 AND idx >= $2 AND idx < $3"
        " ORDER BY idx",
        event_id,
        start,
        end,
    )
    return [bytes(row["leaf"]) for row in rows]


async def admission_of_ticket(conn: Connection, event_id: str, ticket: int) -> int | None:
    """The index of the latest admission of ``ticket`` (a number admits once; a Tier-1 room
    switched on again may count from 1 again, and then the latest is the one just made)."""
    found = await conn.fetchval(
        "SELECT idx FROM admission_log_entries WHERE event_id = $1"
        " AND admitted_ticket = $2 ORDER BY idx DESC LIMIT 1",
        event_id,
        ticket,
    )
    return None if found is None else int(found)
