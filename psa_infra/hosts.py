"""Reach the inventory's containers and set them up in dependency order.

:func:`configure_hosts` runs :class:`~psa_infra.configure.HostRun` on many
containers: the data services in parallel, then the app containers once the
data services answer on their ports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .configure import HostReport, HostRun, StepOutcome
from .errors import SSHError
from .inventory import Container, Inventory, LoadedInventory
from .playbooks import Playbook
from .render import Renderer
from .ssh import Connection, KnownHosts, Target, parallel, quote


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
    limit: int = 8,
    connect_deadline: float = 60.0,
    report: Callable[[StepOutcome], None] | None = None,
) -> list[HostReport]:
    """Configure containers: the data services in parallel, then the app.

    ``trust_new`` names containers psa-infra has just created, whose host
    key is recorded on first contact; ``accept_new_keys`` extends that to
    every host whose key is not known yet.
    """
    inventory = loaded.inventory
    chosen = containers or inventory.containers
    data = [c for c in chosen if c.role != "app"]
    apps = [c for c in chosen if c.role == "app"]

    def work(container: Container) -> HostReport:
        trusted = accept_new_keys or container.hostname in trust_new
        connection = Connection(
            target_of(inventory, container),
            known_hosts,
            trust_new=trusted,
            connect_deadline=connect_deadline,
        )
        try:
            if container.role == "app" and not dry_run:
                wait_for_ports(connection, data_endpoints(inventory), timeout=180)
            return HostRun(
                connection, container, renderer, playbooks, dry_run, report
            ).run()
        finally:
            connection.close()

    reports: list[HostReport] = []
    for group in (data, apps):
        failed = [r.host for r in reports if r.error]
        if failed and group is apps and not dry_run:
            for container in group:
                reports.append(
                    HostReport(
                        container.hostname,
                        error=f"not configured: {', '.join(failed)} failed first",
                    )
                )
            continue
        for container, result, error in parallel(group, work, limit):
            if error is None:
                reports.append(result)
            elif isinstance(error, SSHError):
                reports.append(HostReport(container.hostname, error=error.message))
            else:
                raise error
    return reports
