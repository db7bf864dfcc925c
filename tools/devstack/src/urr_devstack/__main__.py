"""``urr-devstack``: ``up`` runs the local stack, ``status`` shows it, ``down`` stops it."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

from urr_common.settings import SettingsError, load_settings
from urr_devstack.infra import InfraError
from urr_devstack.keys import AdminSettingsError
from urr_devstack.postgres import PostgresSetupError
from urr_devstack.procs import is_listening
from urr_devstack.runstate import RunState, cmdline, stop_recorded
from urr_devstack.services import SERVICES, ServiceTableError, is_runnable, resolve_ports
from urr_devstack.settings import DevstackSettings
from urr_devstack.stack import StatePaths, up
from urr_devstack.supervisor import is_ready


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="urr-devstack",
        description="The URR local stack; settings: URR_DEVSTACK__* (tools/devstack/README.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start the servers and the services; Ctrl-C stops")
    up_parser.add_argument(
        "--no-services", action="store_true", help="servers and provisioning only"
    )
    up_parser.add_argument(
        "--skip", action="append", default=[], metavar="NAME", help="do not start this service"
    )
    down_parser = commands.add_parser("down", help="stop a running `up` (or what it left)")
    down_parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    commands.add_parser("status", help="what is listening and what is ready")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(DevstackSettings)
        if args.command == "up":
            if args.skip:
                skipped = [*settings.skip_services, *args.skip]
                settings = settings.model_copy(update={"skip_services": skipped})
            return up(settings, no_services=args.no_services)
        if args.command == "down":
            return down(settings, args.timeout)
        return status(settings)
    except (
        SettingsError,
        ServiceTableError,
        InfraError,
        PostgresSetupError,
        AdminSettingsError,
    ) as exc:
        print(f"urr-devstack: {exc}", file=sys.stderr)
        return 2


def down(settings: DevstackSettings, timeout_s: float) -> int:
    """SIGTERM the running ``up``; if it is gone, stop the processes it left behind."""
    paths = StatePaths(settings.resolved_state_dir())
    state = RunState.load(paths.runfile)
    if state is None:
        print("urr-devstack: not running (no run file in the state folder)")
        return 0
    line = cmdline(state.pid)
    if line is not None and "devstack" in line:
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and cmdline(state.pid) is not None:
            time.sleep(0.2)
        if cmdline(state.pid) is not None:
            print(f"urr-devstack: pid {state.pid} still running after {timeout_s:.0f}s")
            return 1
        print(f"urr-devstack: stopped (pid {state.pid})")
        return 0
    # `up` died without cleaning up (SIGKILL): services first, then the servers they used.
    left = stop_recorded(state.services) + stop_recorded(list(reversed(state.servers)))
    paths.runfile.unlink(missing_ok=True)
    print("urr-devstack: stopped leftovers: " + (", ".join(left) or "none"))
    return 0


def status(settings: DevstackSettings) -> int:
    """One line per server and service: listening/ready or not. Exit 0 when all are up."""
    paths = StatePaths(settings.resolved_state_dir())
    state = RunState.load(paths.runfile)
    if state is not None and cmdline(state.pid) is not None:
        print(f"urr-devstack up: pid {state.pid}, {state.phase}")
    else:
        print("urr-devstack up: not running from this state folder")
    host = settings.host
    healthy = True
    for name, port in settings.ports.model_dump().items():
        listening = is_listening(host, port)
        healthy &= listening
        print(f"  {name:<16} {host}:{port:<6} {'listening' if listening else 'DOWN'}")
    ports = resolve_ports(SERVICES, settings.service_ports, reserved=settings.ports.model_dump())
    for spec in SERVICES:
        port = ports[spec.name]
        if port is None or spec.health_path is None:
            continue
        url = f"http://{host}:{port}{spec.health_path}"
        if not is_runnable(spec.module):
            print(f"  {spec.name:<16} {host}:{port:<6} not installed")
        elif is_ready(url):
            print(f"  {spec.name:<16} {host}:{port:<6} ready")
        elif is_listening(host, port):
            healthy = False
            print(f"  {spec.name:<16} {host}:{port:<6} NOT READY")
        else:
            print(f"  {spec.name:<16} {host}:{port:<6} not running")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
