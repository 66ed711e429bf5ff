"""Reach the inventory's containers and set them up in dependency order.

:func:`configure_hosts` runs :class:`~psa_infra.configure.HostRun` on many
containers: the data services in parallel, then the app containers once the
data services answer on their ports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .configure import HostReport, HostRun, StepOutcome
from .errors import SSHError
from .inventory import Container, Inventory, LoadedInventory
from .playbooks import Playbook
from .render import Renderer
from .ssh import Connection, KnownHosts, Target, parallel, quote

# How long an app container waits for the data containers to be set up.
GATE_TIMEOUT = 3600.0
# Hosts set up at once by default: each is one SSH connection, mostly waiting.
HOST_PARALLEL = 8


def wait_for_ports(
    connection: Connection, endpoints: list[tuple[str, str, int]], timeout: float
) -> None:
    """Wait until every (name, address, port) answers from ``connection``'s host."""
    checks = " && ".join(
        f"timeout 2 bash -c {quote(f'</dev/tcp/{address}/{port}')} 2>/dev/null"
        for _, address, port in endpoints
    )
    deadline = time.monotonic() + timeout
    while True:
        if connection.run(checks, check=False, timeout=30).ok:
            return
        if time.monotonic() > deadline:
            down = ", ".join(f"{n} {a}:{p}" for n, a, p in endpoints)
            raise SSHError(
                f"[{connection.name}] the data services do not answer: {down}",
                hint="check those containers' services: psa-infra verify",
            )
        time.sleep(1)


def target_of(inventory: Inventory, container: Container) -> Target:
    """How to reach a container over SSH, from the inventory's ssh settings."""
    ssh = inventory.ssh
    jump = None
    if ssh.jump_host:
        user, _, rest = ssh.jump_host.rpartition("@")
        host, _, port = rest.partition(":")
        jump = Target(
            name=f"jump {host}",
            address=host,
            user=user or ssh.user,
            key_file=Path(ssh.private_key).expanduser(),
            port=int(port) if port.isdigit() else 22,
            connect_timeout=ssh.connect_timeout,
        )
    return Target(
        name=container.hostname,
        address=str(container.address),
        user=ssh.user,
        key_file=Path(ssh.private_key).expanduser(),
        connect_timeout=ssh.connect_timeout,
        jump=jump,
    )


def data_endpoints(inventory: Inventory) -> list[tuple[str, str, int]]:
    """The data services the app connects to: (name, address, port)."""
    ports = {
        "postgresql": inventory.postgresql.port,
        "redis": inventory.redis.port,
        "rabbitmq": inventory.rabbitmq.port,
    }
    return [
        (c.hostname, str(c.address), ports[c.role])
        for c in inventory.containers
        if c.role in ports
    ]


def configure_hosts(
    loaded: LoadedInventory,
    renderer: Renderer,
    playbooks: Mapping[str, Playbook],
    known_hosts: KnownHosts,
    *,
    containers: list[Container] | None = None,
    dry_run: bool = False,
    trust_new: frozenset[str] = frozenset(),
    accept_new_keys: bool = False,
    limit: int = HOST_PARALLEL,
    connect_deadline: float = 60.0,
    report: Callable[[StepOutcome], None] | None = None,
) -> list[HostReport]:
    """Configure containers: the data services in parallel, then the app.

    The app containers run alongside the data containers up to their first
    step marked ``wait_for_data`` (installing Node.js needs no database);
    there they wait until every data container is done and its service
    answers on its port, and stop with a clear error if one failed.

    ``trust_new`` names containers psa-infra has just created, whose host
    key is recorded on first contact; ``accept_new_keys`` extends that to
    every host whose key is not known yet.
    """
    inventory = loaded.inventory
    chosen = containers or inventory.containers
    # Data containers first: the pool starts them before any app container,
    # so an app container waiting at its gate never holds a slot they need.
    ordered = [c for c in chosen if c.role != "app"] + [
        c for c in chosen if c.role == "app"
    ]
    data_left = {c.hostname for c in ordered if c.role != "app"}
    data_failed: list[str] = []
    data_done = threading.Condition()

    def gate(connection: Connection) -> None:
        with data_done:
            data_done.wait_for(lambda: not data_left, timeout=GATE_TIMEOUT)
            if data_left or data_failed:
                waiting = sorted(data_failed) or sorted(data_left)
                raise SSHError(
                    f"[{connection.name}] not continued: the data services it needs "
                    f"did not get ready ({', '.join(waiting)})"
                )
        wait_for_ports(connection, data_endpoints(inventory), timeout=180)

    def work(container: Container) -> HostReport:
        trusted = accept_new_keys or container.hostname in trust_new
        connection = Connection(
            target_of(inventory, container),
            known_hosts,
            trust_new=trusted,
            connect_deadline=connect_deadline,
        )
        failed = True
        try:
            run = HostRun(connection, container, renderer, playbooks, dry_run, report)
            if container.role == "app" and not dry_run:
                run.gate = lambda: gate(connection)
            result = run.run()
            failed = result.error is not None
            return result
        finally:
            connection.close()
            if container.hostname in data_left:
                with data_done:
                    data_left.discard(container.hostname)
                    if failed:
                        data_failed.append(container.hostname)
                    data_done.notify_all()

    reports: list[HostReport] = []
    for container, result, error in parallel(ordered, work, limit):
        if error is None:
            reports.append(result)
        elif isinstance(error, SSHError):
            reports.append(HostReport(container.hostname, error=error.message))
        else:
            raise error
    return reports
