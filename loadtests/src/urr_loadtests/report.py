"""Reading Locust's CSV files, checking the targets, drawing the charts."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

#: Route-name prefixes that are the runner's setup, never measured against the targets.
SETUP_PREFIX = "setup:"


@dataclass(frozen=True)
class RouteStats:
    name: str
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _num(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


def read_stats(prefix: Path) -> list[RouteStats]:
    rows = []
    with open(f"{prefix}_stats.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows.append(
                RouteStats(
                    name=row["Name"],
                    requests=int(_num(row["Request Count"])),
                    failures=int(_num(row["Failure Count"])),
                    p50_ms=_num(row["50%"]),
                    p95_ms=_num(row["95%"]),
                    p99_ms=_num(row["99%"]),
                )
            )
    return rows


@dataclass(frozen=True)
class Target:
    """A latency bound on the routes whose name contains ``route``."""

    label: str
    route: str
    p95_ms: float | None = None
    p99_ms: float | None = None


def check_targets(stats: list[RouteStats], targets: list[Target]) -> list[str]:
    """Every missed target, in words (empty when all are met)."""
    missed = []
    measured = [s for s in stats if s.name != "Aggregated" and SETUP_PREFIX not in s.name]
    for route in measured:
        if route.requests and route.error_rate >= 0.01:
            missed.append(f"error rate {route.error_rate:.2%} >= 1% on {route.name}")
    for target in targets:
        for route in (s for s in measured if target.route in s.name):
            if target.p95_ms is not None and route.p95_ms > target.p95_ms:
                missed.append(
                    f"{target.label}: P95 {route.p95_ms:.0f} ms > {target.p95_ms:.0f} ms"
                    f" on {route.name}"
                )
            if target.p99_ms is not None and route.p99_ms > target.p99_ms:
                missed.append(
                    f"{target.label}: P99 {route.p99_ms:.0f} ms > {target.p99_ms:.0f} ms"
                    f" on {route.name}"
                )
    return missed


def chart_history(prefix: Path, out: Path) -> None:
    """Latency percentiles and requests/s over time, from the aggregated history rows."""
    times, rps, p50, p95, p99 = [], [], [], [], []
    with open(f"{prefix}_stats_history.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["Name"] != "Aggregated":
                continue
            times.append(_num(row["Timestamp"]))
            rps.append(_num(row["Requests/s"]))
            p50.append(_num(row["50%"]))
            p95.append(_num(row["95%"]))
            p99.append(_num(row["99%"]))
    if not times:
        return
    start = times[0]
    elapsed = [t - start for t in times]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(elapsed, p50, label="P50")
    top.plot(elapsed, p95, label="P95")
    top.plot(elapsed, p99, label="P99")
    top.set_ylabel("latency (ms)")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(elapsed, rps, color="tab:green")
    bottom.set_ylabel("requests/s")
    bottom.set_xlabel("seconds since start")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "latency_and_throughput.png", dpi=100)
    plt.close(figure)


def chart_queue(samples: list[dict[str, float]], out: Path, capacity: int | None) -> None:
    """Waiting (both tiers), admitted and served over time, from the services' own figures."""
    if not samples:
        return
    start = samples[0]["t"]
    elapsed = [s["t"] - start for s in samples]
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for key, label in (
        ("tier1_waiting", "Tier-1 waiting"),
        ("tier2_waiting", "Tier-2 waiting"),
        ("tier2_admitted", "Tier-2 admitted (at once)"),
        ("served", "Tier-1 served (counter)"),
    ):
        points = [(e, s[key]) for e, s in zip(elapsed, samples, strict=True) if key in s]
        axis.plot([p[0] for p in points], [p[1] for p in points], label=label)
    if capacity:
        axis.axhline(capacity, color="red", linestyle="--", linewidth=0.8, label="capacity")
    axis.set_xlabel("seconds since start")
    axis.set_ylabel("users")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out / "waiting_admitted_served.png", dpi=100)
    plt.close(figure)


def kendall_tau(pairs: list[tuple[float, float]]) -> float:
    """Kendall's tau-b of (x, y) pairs; O(n^2) is fine for a few thousand points."""
    n = len(pairs)
    if n < 2:
        return 1.0
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        xi, yi = pairs[i]
        for j in range(i + 1, n):
            dx = xi - pairs[j][0]
            dy = yi - pairs[j][1]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else 1.0


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = best = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best
