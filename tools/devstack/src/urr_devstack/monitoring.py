"""Prometheus and Alertmanager on the local stack (opt-in: ``URR_DEVSTACK__MONITORING__ENABLED``).

Both are Debian's packages (``prometheus``, ``prometheus-alertmanager``; ``make system-deps``).
What they run is derived from the Kubernetes files, never written twice:

- the rule groups of every ``PrometheusRule`` in ``k8s/components/monitoring/`` (the ones the
  overlays apply), expressions untouched. Only ``for:`` may be replaced
  (``MONITORING__RULE_FOR``, e.g. ``0s``), so an alert can fire locally in seconds;
- the route tree and inhibit rules of ``k8s/components/monitoring/alertmanager.yaml``, with
  every receiver replaced by one webhook (``MONITORING__WEBHOOK_URL``; none: receivers without
  a destination, the alerts visible in Alertmanager only): e-mail and Slack need secrets a
  laptop does not have;
- one scrape target per service of the stack, at its metrics listener (public port + 1000,
  ``urr_common.settings.MetricsSettings``), labelled ``app`` like the PodMonitor does.

A Prometheus or Alertmanager already listening on its port is reused as it is, like the other
servers; its configuration is then its own.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from urr_common.settings import MetricsSettings
from urr_devstack.procs import ServerProcess, is_listening
from urr_devstack.settings import MonitoringSettings
from urr_devstack.signals import never

MONITORING_COMPONENT = Path("k8s/components/monitoring")
ALERTMANAGER_CONFIG = MONITORING_COMPONENT / "alertmanager.yaml"
DASHBOARDS = Path("monitoring/grafana")
#: Prometheus's own series: no process of ours exports them.
BUILTIN_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})


class MonitoringError(RuntimeError):
    """Prometheus or Alertmanager cannot be configured or started; the message says why."""


def duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds`` (milliseconds are its finest unit)."""
    return f"{max(1, round(seconds * 1000))}ms"


def rule_groups(repo: Path) -> list[dict[str, Any]]:
    """The groups of every PrometheusRule of the monitoring component, in file order."""
    groups: list[dict[str, Any]] = []
    for path in sorted((repo / MONITORING_COMPONENT).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == "PrometheusRule":
                groups.extend(doc["spec"]["groups"])
    if not groups:
        raise MonitoringError(f"no PrometheusRule groups under {repo / MONITORING_COMPONENT}")
    return groups


def local_rules(groups: Iterable[Mapping[str, Any]], rule_for: str | None) -> dict[str, Any]:
    """A Prometheus rule file of ``groups``; every alert's ``for`` becomes ``rule_for`` when
    set (the expression, labels and annotations stay as they are)."""
    rendered = []
    for group in groups:
        rules = []
        for rule in group["rules"]:
            copy = dict(rule)
            if rule_for is not None and "alert" in copy:
                copy["for"] = rule_for
            rules.append(copy)
        rendered.append({**group, "rules": rules})
    return {"groups": rendered}


def scrape_targets(host: str, ports: Mapping[str, int | None]) -> dict[str, str]:
    """``app`` -> ``host:metrics port`` of every service with an HTTP listener."""
    metrics = MetricsSettings()
    return {name: f"{host}:{metrics.port_beside(port)}" for name, port in ports.items() if port}


def prometheus_config(
    targets: Mapping[str, str],
    rules_file: Path,
    alertmanager: str,
    settings: MonitoringSettings,
) -> dict[str, Any]:
    scrape = duration(settings.scrape_interval_s)
    return {
        "global": {
            "scrape_interval": scrape,
            # Never longer than the interval (Prometheus refuses the configuration otherwise).
            "scrape_timeout": duration(min(settings.scrape_interval_s, 10.0)),
            "evaluation_interval": duration(settings.evaluation_interval_s),
        },
        "rule_files": [str(rules_file)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {
                "job_name": "urr",
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [address], "labels": {"app": app}}
                    for app, address in sorted(targets.items())
                ],
            }
        ],
    }


def _with_group_wait(route: Mapping[str, Any], group_wait: str | None) -> dict[str, Any]:
    copy = dict(route)
    if group_wait is not None:
        copy["group_wait"] = group_wait
        copy["group_interval"] = group_wait
    if "routes" in copy:
        copy["routes"] = [_with_group_wait(child, group_wait) for child in copy["routes"]]
    return copy


def alertmanager_config(
    k8s_config: Mapping[str, Any], settings: MonitoringSettings
) -> dict[str, Any]:
    """The Kubernetes route tree with local receivers (see the module docstring)."""
    receivers = []
    for receiver in k8s_config["receivers"]:
        local: dict[str, Any] = {"name": receiver["name"]}
        if settings.webhook_url is not None:
            local["webhook_configs"] = [{"url": settings.webhook_url, "send_resolved": True}]
        receivers.append(local)
    group_wait = None if settings.group_wait_s is None else duration(settings.group_wait_s)
    return {
        "route": _with_group_wait(k8s_config["route"], group_wait),
        "inhibit_rules": list(k8s_config.get("inhibit_rules", [])),
        "receivers": receivers,
    }


@dataclass(frozen=True)
class MonitoringFiles:
    prometheus_config: Path
    rules: Path
    alertmanager_config: Path


def write_files(
    repo: Path,
    folder: Path,
    targets: Mapping[str, str],
    host: str,
    settings: MonitoringSettings,
) -> MonitoringFiles:
    """Render the three files into ``folder`` (JSON is YAML: no formatting surprises)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = MonitoringFiles(
        folder / "prometheus.yml", folder / "rules.yml", folder / "alertmanager.yml"
    )
    rules = local_rules(rule_groups(repo), settings.rule_for)
    files.rules.write_text(json.dumps(rules, indent=1))
    alertmanager = f"{host}:{settings.alertmanager_port}"
    config = prometheus_config(targets, files.rules, alertmanager, settings)
    files.prometheus_config.write_text(json.dumps(config, indent=1))
    k8s = yaml.safe_load((repo / ALERTMANAGER_CONFIG).read_text(encoding="utf-8"))
    files.alertmanager_config.write_text(json.dumps(alertmanager_config(k8s, settings), indent=1))
    return files


def prometheus_server(
    files: MonitoringFiles, folder: Path, logs: Path, host: str, port: int
) -> ServerProcess:
    return ServerProcess(
        name="prometheus",
        argv=[
            "prometheus",
            f"--config.file={files.prometheus_config}",
            f"--storage.tsdb.path={folder / 'prometheus-data'}",
            "--storage.tsdb.retention.time=1d",
            f"--web.listen-address={host}:{port}",
        ],
        port=port,
        log_path=logs / "prometheus.log",
        host=host,
    )


def alertmanager_server(
    files: MonitoringFiles, folder: Path, logs: Path, host: str, port: int
) -> ServerProcess:
    return ServerProcess(
        name="alertmanager",
        argv=[
            "prometheus-alertmanager",
            f"--config.file={files.alertmanager_config}",
            f"--storage.path={folder / 'alertmanager-data'}",
            f"--web.listen-address={host}:{port}",
            # No gossip port: two local stacks (or a test and `make up`) would fight over 9094.
            "--cluster.listen-address=",
        ],
        port=port,
        log_path=logs / "alertmanager.log",
        host=host,
    )


def check_ready(host: str, port: int, name: str) -> None:
    """``/-/ready`` answers 200 (both servers have it), or raise."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{host}:{port}/-/ready", timeout=3) as answer:
            if answer.status != 200:
                raise ConnectionError(f"{name}: /-/ready answered {answer.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(f"{name}: GET /-/ready failed: {exc}") from exc


def start_monitoring(
    repo: Path,
    state_dir: Path,
    host: str,
    service_ports: Mapping[str, int | None],
    settings: MonitoringSettings,
    say: Callable[[str], None] = print,
    cancelled: Callable[[], bool] = never,
    start_timeout_s: float = 30.0,
) -> list[ServerProcess]:
    """Reuse or start Alertmanager, then Prometheus; the servers we started (to stop)."""
    folder = state_dir / "monitoring"
    files = write_files(repo, folder, scrape_targets(host, service_ports), host, settings)
    started: list[ServerProcess] = []
    servers = (
        ("alertmanager", settings.alertmanager_port, alertmanager_server),
        ("prometheus", settings.prometheus_port, prometheus_server),
    )
    try:
        for name, port, make in servers:
            if is_listening(host, port):
                try:
                    check_ready(host, port, name)
                except ConnectionError as exc:
                    raise MonitoringError(
                        f"something listens on {host}:{port} but is not a ready {name} ({exc});"
                        f" move ours with URR_DEVSTACK__MONITORING__{name.upper()}_PORT"
                    ) from exc
                say(
                    f"reusing {name} already listening on {host}:{port} (its configuration "
                    f"and rules are its own, not {folder})"
                )
                continue
            server = make(files, folder, state_dir / "logs", host, port)
            try:
                server.launch()
            except FileNotFoundError as exc:
                raise MonitoringError(
                    f"{server.argv[0]} is not installed: `make system-deps` installs Debian's "
                    "prometheus and prometheus-alertmanager"
                ) from exc
            started.append(server)
            server.wait_ready(start_timeout_s, cancelled)
            say(f"started {name} on port {port} (log: {server.log_path})")
    except BaseException:
        for server in reversed(started):
            server.stop()
        raise
    return started


# -- which metrics the dashboards and alerts name, and which the processes serve -----------

#: PromQL words that are never metric names when they stand without a following "(".
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
     "group_right", "inf", "nan", "start", "end"}
)  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUES = re.compile(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,.*\)\s*")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects, by lexing rather than parsing: strings, label
    matchers ``{...}``, ranges ``[...]`` and grouping lists (``by (...)``, also without, on,
    ignoring, group_left/right) are blanked; of the identifiers left, a word followed by ``(``
    is a function or an aggregation and the PromQL keywords are dropped; the rest are metric
    names. Numbers never start an identifier, and Grafana's ``$vars`` sit inside strings or
    ranges. The tests hold this to ``promql_parser`` on every real query."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def dashboard_queries(repo: Path) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and ``label_values`` variable of every dashboard
    file (a variable contributes its metric name only)."""
    queries: list[tuple[str, str]] = []

    def panels(items: list[dict[str, Any]], name: str) -> None:
        for panel in items:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append((f"{name}: panel {panel.get('title')}", target["expr"]))
            panels(panel.get("panels", []), name)

    for path in sorted((repo / DASHBOARDS).glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        panels(dashboard.get("panels", []), path.name)
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else ""
            match = _LABEL_VALUES.fullmatch(text or "")
            if match is not None:
                queries.append((f"{path.name}: variable {variable['name']}", match.group(1)))
    return queries


def alert_queries(repo: Path) -> list[tuple[str, str]]:
    """(``alert <name>``, expression) of every alert the local Prometheus loads."""
    return [
        (f"alert {rule['alert']}", rule["expr"])
        for group in rule_groups(repo)
        for rule in group["rules"]
        if "alert" in rule
    ]


def series_served(exposition: str) -> set[str]:
    """Series names a ``/metrics`` page serves, samples or not: a labelled metric with no
    child yet still has its ``# TYPE`` line (prometheus_client), and a histogram its
    ``_bucket``/``_sum``/``_count``."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {name, f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            head = _IDENTIFIER.match(line)
            if head is not None:
                names.add(head.group(0))
    return names


def unserved_metrics(repo: Path, pages: Iterable[str]) -> list[tuple[str, str]]:
    """(where, metric) of every dashboard or alert query naming a series none of the
    ``/metrics`` ``pages`` serves (Prometheus's own series aside)."""
    served = set(BUILTIN_SERIES)
    for page in pages:
        served |= series_served(page)
    return [
        (where, name)
        for where, expr in dashboard_queries(repo) + alert_queries(repo)
        for name in sorted(metric_names(expr))
        if name not in served
    ]
