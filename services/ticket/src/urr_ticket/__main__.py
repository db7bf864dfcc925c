"""``python -m urr_ticket`` serves the API (port 3002); ``python -m urr_ticket seed`` seeds."""

from __future__ import annotations

import argparse
import asyncio
import sys

from urr_common.logs import configure_logging
from urr_common.service import run, serve
from urr_common.settings import SettingsError, load_settings
from urr_ticket.app import create_app
from urr_ticket.seed import DemoEvent, QueueConfig, seed
from urr_ticket.settings import TicketSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="urr-ticket", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the HTTP API (the default)")
    seeder = sub.add_parser("seed", help="seed a demo event and configure its Tier-2 queue")
    seeder.add_argument("--event", default="demo")
    seeder.add_argument("--name", default="URR demo concert")
    seeder.add_argument("--rows", type=int, default=10, choices=range(1, 27), metavar="1-26")
    seeder.add_argument("--seats-per-row", type=int, default=10)
    seeder.add_argument(
        "--max-seats-per-user",
        type=int,
        choices=range(1, 101),
        metavar="1-100",
        help="seats one account may hold and buy together (default: keep; 4 when new)",
    )
    seeder.add_argument(
        "--hold-seconds",
        type=int,
        choices=range(5, 3601),
        metavar="5-3600",
        help="longest seat hold (default: keep; 300 when new)",
    )
    seeder.add_argument("--no-queue", action="store_true", help="skip the queue service call")
    seeder.add_argument("--capacity", type=int, default=50)
    seeder.add_argument("--admit-per-second", type=float, default=5.0)
    seeder.add_argument("--session-seconds", type=int, default=900)
    seeder.add_argument("--idle-timeout-seconds", type=int, default=60)
    seeder.add_argument("--require-tier1-token", action="store_true")
    return parser


def _seed(settings: TicketSettings, args: argparse.Namespace) -> int:
    event = DemoEvent(
        event_id=args.event,
        name=args.name,
        rows=args.rows,
        seats_per_row=args.seats_per_row,
        max_seats_per_user=args.max_seats_per_user,
        hold_seconds=args.hold_seconds,
    )
    queue = None
    if not args.no_queue:
        queue = QueueConfig(
            capacity=args.capacity,
            admit_per_second=args.admit_per_second,
            session_seconds=args.session_seconds,
            idle_timeout_seconds=args.idle_timeout_seconds,
            require_tier1_token=args.require_tier1_token,
        )
    try:
        added, queue_ok, message = asyncio.run(seed(settings, event, queue))
    except Exception as exc:  # PostgreSQL unreachable or refusing: say so, exit 1
        print(f"seed failed: cannot write the catalog: {exc!r}", file=sys.stderr)
        return 1
    total = len(event.seats())
    print(f"seeded event {event.event_id!r}: {added} seats added, {total} in all")
    if queue_ok:
        print(f"queue for {event.event_id!r}: {message}")
    else:
        print(
            f"WARNING: the Tier-2 queue for {event.event_id!r} is NOT configured ({message});"
            " the catalog is seeded; rerun the seed once the queue service is up",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(TicketSettings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log, service=settings.service_name)
    if args.command == "seed":
        sys.exit(_seed(settings, args))
    try:
        app = create_app(settings)
    except SettingsError as exc:  # a setting checked where it is used (the id key)
        print(exc, file=sys.stderr)
        sys.exit(2)

    async def serve_app() -> None:
        await serve(app, settings.http)

    run(serve_app, use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    main()
