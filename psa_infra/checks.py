"""Checks that span several keys of an inventory.

The schema (:mod:`psa_infra.inventory`) checks each value alone; these checks
look across values: collisions, addresses against their bridge's subnet,
ports, service placement, node sizes, secrets and the PostgreSQL connection
budget. All problems are gathered and reported together.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .errors import InventoryError
from .inventory import ROLE_PORTS, SSH_PORT, Inventory, LoadedInventory
from .yamlsrc import Loc, format_loc

REQUIRED_SECRETS = ("postgres_password", "redis_password", "rabbitmq_password")
REQUIRED_ROLES = ("postgresql", "redis", "rabbitmq")


class _Report:
    def __init__(self, loaded: LoadedInventory) -> None:
        self.document = loaded.document
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self._lines: dict[str, int] = {}

    def error(self, loc: Loc, message: str) -> None:
        text = f"{self.document.where(loc)}: {format_loc(loc)}: {message}"
        self.problems.append(text)
        self._lines[text] = self.document.line(loc) or 0

    def line_of(self, problem: str) -> int:
        return self._lines.get(problem, 0)

    def warn(self, loc: Loc, message: str) -> None:
        self.warnings.append(
            f"{self.document.where(loc)}: {format_loc(loc)}: {message}"
        )

    def line(self, loc: Loc) -> str:
        line = self.document.line(loc)
        return f" (line {line})" if line else ""


def connection_budget(inventory: Inventory) -> tuple[int, int, int]:
    """Return (PM2 instances, connections they may open, connections needed)."""
    instances = sum(
        spec.instances for c in inventory.containers for spec in c.services.values()
    )
    demand = instances * inventory.postgresql.pool.max
    return instances, demand, demand + inventory.postgresql.reserved_connections


def _unique(report: _Report, inventory: Inventory) -> None:
    for attribute in ("vmid", "hostname", "address"):
        first: dict[object, int] = {}
        for index, container in enumerate(inventory.containers):
            value = getattr(container, attribute)
            if value in first:
                other = inventory.containers[first[value]]
                owner = (
                    f"container {other.vmid}"
                    if attribute == "hostname"
                    else other.hostname
                )
                report.error(
                    ("containers", index, attribute),
                    f"{attribute} {value} is already used by {owner}"
                    + report.line(("containers", first[value], attribute)),
                )
            else:
                first[value] = index


def _addresses(report: _Report, inventory: Inventory) -> None:
    for index, container in enumerate(inventory.containers):
        network = inventory.networks.get(container.bridge)
        if network is None:
            known = ", ".join(sorted(inventory.networks))
            report.error(
                ("containers", index, "bridge"),
                f"bridge '{container.bridge}' is not defined under networks ({known})",
            )
            continue
        loc: Loc = ("containers", index, "address")
        address = container.address
        if address not in network.subnet:
            report.error(
                loc,
                f"{address} is outside {container.bridge}'s subnet {network.subnet}",
            )
        elif address == network.gateway:
            report.error(loc, f"{address} is the gateway of {container.bridge}")
        elif address in (
            network.subnet.network_address,
            network.subnet.broadcast_address,
        ):
            report.error(loc, f"{address} is not a host address of {network.subnet}")


def _nodes(report: _Report, inventory: Inventory) -> None:
    sizes = inventory.proxmox.nodes
    if sizes and inventory.proxmox.node not in sizes:
        report.error(
            ("proxmox", "node"),
            f"node '{inventory.proxmox.node}' is not listed under proxmox.nodes",
        )
    memory_per_node: Counter[str] = Counter()
    for index, container in enumerate(inventory.containers):
        node = inventory.node_of(container)
        memory_per_node[node] += container.memory
        if not sizes:
            continue
        size = sizes.get(node)
        if size is None:
            report.error(
                ("containers", index, "node"),
                f"node '{node}' is not listed under proxmox.nodes "
                f"({', '.join(sorted(sizes))})",
            )
            continue
        if container.cores > size.cores:
            report.error(
                ("containers", index, "cores"),
                f"{container.cores} cores is more than node {node} has ({size.cores})",
            )
        if container.memory > size.memory:
            report.error(
                ("containers", index, "memory"),
                f"{container.memory} MiB is more than node {node} has "
                f"({size.memory} MiB)",
            )
    for node, total in memory_per_node.items():
        size = sizes.get(node)
        if size is not None and total > size.memory:
            report.warn(
                ("proxmox", "nodes", node, "memory"),
                f"containers on {node} ask for {total} MiB of memory, more than its "
                f"{size.memory} MiB; they are overcommitted",
            )


def _services(report: _Report, inventory: Inventory) -> None:
    wanted = inventory.app.services
    for name, count in Counter(wanted).items():
        if count > 1:
            report.error(
                ("app", "services"), f"service '{name}' is listed {count} times"
            )
    placed: dict[str, int] = {}
    for index, container in enumerate(inventory.containers):
        if container.services and container.role != "app":
            report.error(
                ("containers", index, "services"),
                "services run only on containers of role 'app', "
                f"not '{container.role}'",
            )
            continue
        for name in container.services:
            loc: Loc = ("containers", index, "services", name)
            if name not in wanted:
                report.error(
                    loc,
                    f"service '{name}' is not one of app.services "
                    f"({', '.join(wanted)})",
                )
            elif name in placed:
                other = inventory.containers[placed[name]]
                report.error(
                    loc,
                    f"service '{name}' is already placed on {other.hostname}"
                    + report.line(("containers", placed[name], "services", name)),
                )
            else:
                placed[name] = index
        if container.role == "app" and not container.services:
            report.warn(
                ("containers", index, "services"), "app container runs no service"
            )
    for name in wanted:
        if name not in placed:
            report.error(
                ("app", "services"),
                f"service '{name}' is not placed on any container "
                "(add it under the services of an app container)",
            )


def _ports(report: _Report, inventory: Inventory) -> None:
    for index, container in enumerate(inventory.containers):
        taken: dict[int, str] = {SSH_PORT: "ssh"}
        for purpose, port in ROLE_PORTS[container.role].items():
            taken[port] = f"{container.role} {purpose}"
        for name, spec in container.services.items():
            if spec.port in taken:
                report.error(
                    ("containers", index, "services", name, "port"),
                    f"port {spec.port} is already used by {taken[spec.port]} "
                    f"on {container.hostname}",
                )
            else:
                taken[spec.port] = f"service {name}"


def _roles(report: _Report, inventory: Inventory) -> None:
    roles: Counter[str] = Counter(c.role for c in inventory.containers)
    for role in REQUIRED_ROLES:
        if not roles[role]:
            report.error(
                ("containers",), f"no container has role '{role}'; the app needs one"
            )
    for role in ("postgresql", "redis", "rabbitmq", "elasticsearch"):
        if roles[role] > 1:
            report.error(
                ("containers",),
                f"{roles[role]} containers have role '{role}'; psa-infra sets up one "
                "server per data service (replicas and clusters are not supported)",
            )


def _secrets(report: _Report, inventory: Inventory, root: Path | None) -> None:
    for name in REQUIRED_SECRETS:
        if name not in inventory.secrets:
            report.error(
                ("secrets",),
                f"secret '{name}' is missing; add {name}: {{env: VARIABLE}}",
            )
    for name, ref in inventory.secrets.items():
        if ref.file is None:
            continue
        path = Path(ref.file).expanduser()
        loc: Loc = ("secrets", name, "file")
        if not path.is_absolute():
            report.error(
                loc, "a secret file must be an absolute path (or start with ~)"
            )
        elif root is not None and path.resolve().is_relative_to(root.resolve()):
            report.error(
                loc,
                "a secret file must live outside the project, "
                "where it cannot be committed",
            )


def _budget(report: _Report, inventory: Inventory) -> None:
    postgres = inventory.postgresql
    instances, demand, needed = connection_budget(inventory)
    if needed <= postgres.max_connections:
        return
    fitting_pool = (postgres.max_connections - postgres.reserved_connections) // max(
        instances, 1
    )
    report.error(
        ("postgresql", "max_connections"),
        f"{postgres.max_connections} is too small: {instances} PM2 instances "
        "x pool max "
        f"{postgres.pool.max} = {demand} connections, plus "
        f"{postgres.reserved_connections} reserved, needs {needed}; raise "
        f"max_connections to at least {needed}"
        + (
            f", or lower postgresql.pool.max to {fitting_pool}"
            if fitting_pool > 0
            else ""
        ),
    )


def check_inventory(loaded: LoadedInventory, root: Path | None = None) -> list[str]:
    """Run every cross-key check; raise with all problems, return warnings."""
    inventory = loaded.inventory
    report = _Report(loaded)
    _unique(report, inventory)
    _addresses(report, inventory)
    _nodes(report, inventory)
    _roles(report, inventory)
    _services(report, inventory)
    _ports(report, inventory)
    _secrets(report, inventory, root)
    _budget(report, inventory)
    if report.problems:
        problems = sorted(report.problems, key=report.line_of)
        raise InventoryError(problems[0], problems=problems)
    loaded.warnings = report.warnings
    return report.warnings


def check_coexistence(first: LoadedInventory, second: LoadedInventory) -> None:
    """Check that two layouts can share one cluster during a migration.

    A vmid or address used by both must belong to the same container (same
    hostname) in each; otherwise creating one layout's container would take
    the other's place.
    """
    problems = []
    for attribute in ("vmid", "address"):
        theirs = {
            getattr(c, attribute): (i, c)
            for i, c in enumerate(second.inventory.containers)
        }
        for index, container in enumerate(first.inventory.containers):
            match = theirs.get(getattr(container, attribute))
            if match is None or match[1].hostname == container.hostname:
                continue
            other_index, other = match
            loc: Loc = ("containers", index, attribute)
            other_loc: Loc = ("containers", other_index, attribute)
            problems.append(
                f"{first.document.where(loc)}: {format_loc(loc)}: {attribute} "
                f"{getattr(container, attribute)} is {container.hostname} here but "
                f"{other.hostname} in {second.document.where(other_loc)}; both layouts "
                "share the cluster while services migrate, so each must be unique"
            )
    if problems:
        raise InventoryError(problems[0], problems=problems)
