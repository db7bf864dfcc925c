"""Typed application keys of the ticket API and its metrics."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from urr_ticket.commands import CommandQueue, ReservationIds
from urr_ticket.seat_locks import SeatLocks
from urr_ticket.seat_map import SeatMaps
from urr_ticket.settings import TicketSettings
from urr_ticket.store import BookingStore


class TicketMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.holds = Counter(
            "urr_ticket_holds",
            "Seat hold attempts by outcome (held, conflict, sold, limit_reached, session_over,"
            " hold_time_used).",
            ["outcome"],
            registry=registry,
        )
        self.reservations = Counter(
            "urr_ticket_reservation_requests",
            "Reservation requests by outcome (queued, duplicate, refused).",
            ["outcome"],
            registry=registry,
        )


TICKET_SETTINGS_KEY = web.AppKey("ticket_settings", TicketSettings)
STORE_KEY = web.AppKey("ticket_store", BookingStore)
LOCKS_KEY = web.AppKey("ticket_seat_locks", SeatLocks)
SEAT_MAPS_KEY = web.AppKey("ticket_seat_maps", SeatMaps)
COMMANDS_KEY = web.AppKey("ticket_commands", CommandQueue)
RESERVATION_IDS_KEY = web.AppKey("ticket_reservation_ids", ReservationIds)
METRICS_KEY = web.AppKey("ticket_metrics", TicketMetrics)
