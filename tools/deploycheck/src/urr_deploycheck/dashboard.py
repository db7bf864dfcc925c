"""The Grafana dashboard (``monitoring/grafana/urr.json``), generated so every query uses only
metrics of ``metrics.METRICS`` (the tests parse them back out, and the stack test checks a
running process serves each)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
#: Health checks and scrapes would dilute the latency and error figures.
USER_ROUTES = 'route!~"/health/.*|/metrics"'
APP = 'app=~"$app"'
EVENT = 'event_id=~"$event"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12


def _quantile(q: float, metric: str, by: str, selector: str) -> str:
    return (
        f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
    )


HTTP = (
    Panel(
        "Requests per second by service and status",
        (
            Query(
                f"sum by (app, status) (rate(urr_http_requests_total{{{APP}}}[{RATE}]))",
                "{{app}} {{status}}",
            ),
        ),
        unit="reqps",
    ),
    Panel(
        "Server errors (5xx share of answers)",
        (
            Query(
                f'sum by (app) (rate(urr_http_requests_total{{{APP}, status="5xx"}}[{RATE}])) '
                f"/ sum by (app) (rate(urr_http_requests_total{{{APP}}}[{RATE}]))",
                "{{app}}",
            ),
        ),
        unit="percentunit",
        description="The canary gate and the UrrHigh5xxRatio alert fire above 1 %.",
    ),
    Panel(
        "Latency percentiles (p50, p95, p99)",
        tuple(
            Query(
                _quantile(q, "urr_http_request_duration_seconds", "app", f"{APP}, {USER_ROUTES}"),
                f"{{{{app}}}} p{int(q * 100)}",
            )
            for q in (0.5, 0.95, 0.99)
        ),
        unit="s",
        description="The canary gate and the UrrHighLatencyP95 alert fire above 300 ms at p95.",
    ),
    Panel(
        "Requests in flight",
        (Query(f"sum by (app) (urr_http_requests_in_flight{{{APP}}})", "{{app}}"),),
    ),
)

RATE_LIMIT = (
    Panel(
        "Rate-limit decisions by category (allowed / blocked)",
        (
            Query(
                f"sum by (category, result) (rate(urr_ratelimit_decisions_total[{RATE}]))",
                "{{category}} {{result}}",
            ),
        ),
        unit="reqps",
    ),
    Panel(
        "Fail-open decisions by category",
        (
            Query(
                f'sum by (category) (rate(urr_ratelimit_decisions_total{{source="open"}}[{RATE}]))',
                "{{category}}",
            ),
        ),
        unit="reqps",
        description="Redis slow or down: these categories allow everything (UrrRateLimitFailOpen).",
    ),
    Panel(
        "Redis circuit breaker (0 closed, 1 half-open, 2 open)",
        (Query("max by (pod) (urr_ratelimit_breaker_state)", "{{pod}}"),),
    ),
    Panel(
        "Rate-limit decision time p99 by source",
        (Query(_quantile(0.99, "urr_ratelimit_decision_seconds", "source", ""), "{{source}}"),),
        unit="s",
        description="Target from the operations guide: p95 <= 10 ms, p99 <= 20 ms.",
    ),
)

QUEUE = (
    Panel(
        "Queue: waiting, admitted and capacity",
        (
            Query(f"max by (event_id) (urr_queue_waiting{{{EVENT}}})", "{{event_id}} waiting"),
            Query(
                f"max by (event_id) (urr_queue_active_sessions{{{EVENT}}})", "{{event_id}} admitted"
            ),
            Query(f"max by (event_id) (urr_queue_capacity{{{EVENT}}})", "{{event_id}} capacity"),
        ),
    ),
    Panel(
        "Queue: admissions per second by path, and failed ticks",
        (
            Query(f"sum by (path) (rate(urr_queue_admitted_total[{RATE}]))", "admitted {{path}}"),
            Query(f"sum(rate(urr_queue_tick_errors_total[{RATE}]))", "failed ticks"),
        ),
        unit="ops",
        description="tick: admitted from the line; passthrough: let straight in.",
    ),
    Panel(
        "Queue: entries, and capacity freed by sessions ending",
        (
            Query(f"sum by (outcome) (rate(urr_queue_entries_total[{RATE}]))", "enter {{outcome}}"),
            Query(f"sum(rate(urr_queue_sessions_expired_total[{RATE}]))", "sessions expired"),
            Query(
                f'sum by (reason) (rate(urr_queue_left_total{{was="admitted"}}[{RATE}]))',
                "sessions ended: {{reason}}",
            ),
        ),
        unit="ops",
        description="Entries with freed capacity but no admissions: UrrQueueStuck.",
    ),
    Panel(
        "Queue: admission tick p99",
        (Query(_quantile(0.99, "urr_queue_tick_seconds", "app", ""), "{{app}}"),),
        unit="s",
        description="One tick of one event; ticks run every 0.5 s per event and replica.",
    ),
    Panel(
        "Queue: estimated wait at the back of the line, and the front's wait so far",
        (
            Query(f"max by (event_id) (urr_queue_eta_seconds{{{EVENT}}})", "{{event_id}} eta"),
            Query(
                f"max by (event_id) (urr_queue_oldest_waiter_seconds{{{EVENT}}})",
                "{{event_id}} oldest waiter",
            ),
        ),
        unit="s",
    ),
    Panel(
        "Queue: admission rate by event",
        (Query(f"max by (event_id) (urr_queue_admission_rate{{{EVENT}}})", "{{event_id}}"),),
        unit="ops",
        description="Measured across replicas; before any measurement, what the configuration "
        "allows. 0 while the event is paused.",
    ),
    Panel(
        "Waiting room: serving counter against next position",
        (
            Query(
                f"max by (event_id) (urr_vwr_serving_counter{{{EVENT}}})", "{{event_id}} serving"
            ),
            Query(f"max by (event_id) (urr_vwr_next_position{{{EVENT}}})", "{{event_id}} next"),
        ),
        description="The gap is the crowd still in the Tier-1 room.",
    ),
    Panel(
        "Waiting room: advancer runs by outcome (local scheduler)",
        (Query(f"sum by (outcome) (rate(urr_vwr_advancer_runs_total[{RATE}]))", "{{outcome}}"),),
        unit="ops",
        description="In AWS the advancer's figures are CloudWatch EMF metrics of the Lambda.",
    ),
)

BOOKING = (
    Panel(
        "Booking worker: batches and messages by result",
        (
            Query(
                f"sum by (result) (rate(urr_worker_batches_total[{RATE}]))", "batches {{result}}"
            ),
            Query(
                f"sum by (result) (rate(urr_worker_messages_total[{RATE}]))", "messages {{result}}"
            ),
        ),
        unit="ops",
    ),
    Panel(
        "Booking worker: batch time and queue wait p99",
        (
            Query(_quantile(0.99, "urr_worker_batch_seconds", "app", ""), "batch {{app}}"),
            Query(
                _quantile(0.99, "urr_worker_message_wait_seconds", "app", ""),
                "queue wait {{app}}",
            ),
        ),
        unit="s",
        description="In AWS the Lambda reports the same as EMF (namespace URR/Worker).",
    ),
    Panel(
        "Booking worker (local poller): messages by outcome",
        (
            Query(
                f"sum by (outcome) (rate(urr_ticket_poller_messages_total[{RATE}]))",
                "{{outcome}}",
            ),
        ),
        unit="ops",
        description="compose and kind only: in AWS the SQS event source feeds the Lambda.",
    ),
    Panel(
        "Dead-letter queue depth",
        (Query("max(urr_worker_dlq_messages)", "ticket-events-dlq.fifo"),),
        kind="stat",
        width=6,
        description="Anything above 0 pages (UrrDlqNotEmpty); see the runbook's DLQ section.",
    ),
    Panel(
        "Oldest booking command",
        (Query("max(urr_worker_queue_oldest_age_seconds)", "ticket-events.fifo"),),
        unit="s",
        kind="stat",
        width=6,
        description="Above 10 minutes for 5 minutes: UrrBookingQueueBacklog.",
    ),
    Panel(
        "Oldest dead letter",
        (Query("max(urr_worker_dlq_oldest_age_seconds)", "ticket-events-dlq.fifo"),),
        unit="s",
        kind="stat",
        width=6,
        description="How long the oldest command has waited in the DLQ for someone to look.",
    ),
    Panel(
        "Outbox backlog and publishing",
        (
            Query("max(urr_outbox_unsent)", "unsent rows"),
            Query(f"sum(rate(urr_outbox_published_total[{RATE}]))", "published/s"),
            Query(f"sum(rate(urr_outbox_publish_failures_total[{RATE}]))", "failed rounds/s"),
        ),
        description="Rows waiting while nothing is published: UrrOutboxBacklog.",
    ),
    Panel(
        "Booking consumers: records by outcome, and retries",
        (
            Query(
                f"sum by (consumer, outcome) (rate(urr_booking_consumer_records_total[{RATE}]))",
                "{{consumer}} {{outcome}}",
            ),
            Query(
                f"sum by (consumer) (rate(urr_booking_consumer_retries_total[{RATE}]))",
                "{{consumer}} retries",
            ),
        ),
        unit="ops",
    ),
    Panel(
        "Kafka consumer lag by group and topic",
        (Query("sum by (group, topic) (urr_kafka_consumer_lag)", "{{group}} {{topic}}"),),
    ),
)

ROWS = (
    ("HTTP (every service)", HTTP),
    ("Rate limiting (gateway)", RATE_LIMIT),
    ("Queue (Tier 2) and waiting room (Tier 1)", QUEUE),
    ("Booking back end", BOOKING),
)


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": q.expr, "legendFormat": q.legend, "range": True}
            for i, q in enumerate(panel.queries)
        ],
    }


def layout(rows: tuple[tuple[str, tuple[Panel, ...]], ...]) -> list[dict[str, Any]]:
    """Rows of panels on Grafana's 24-column grid, left to right, wrapping; ids from 1."""
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for title, row in rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id, y, x = next_id + 1, y + 1, 0
        for panel in row:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel(panel, next_id, x, y))
            next_id, x = next_id + 1, x + panel.width
        y += 8
    return panels


def datasource_variable() -> dict[str, Any]:
    """The dashboard variable choosing the Prometheus data source."""
    return {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
    }


def build() -> dict[str, Any]:
    return {
        "uid": "urr-overview",
        "title": "URR: waiting room, rate limits, booking",
        "description": "Metric names: tools/deploycheck/src/urr_deploycheck/metrics.py",
        "tags": ["urr"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                datasource_variable(),
                _variable("app", "Service", "label_values(urr_http_requests_total, app)"),
                # The queue's per-event gauges name every configured event.
                _variable("event", "Event", "label_values(urr_queue_waiting, event_id)"),
            ]
        },
        "annotations": {"list": []},
        "panels": layout(ROWS),
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
