"""Where services live after migrations: journals and the layout they imply.

``migrate-service`` moves one service from the container it shares to a
container of its own and keeps a journal per service under
``.state/migrations/<inventory name>/<service>.json``. Each journal says how
far its move has gone (its *stage*):

``staged``
    the service also runs on its new container; the gateway still sends its
    requests to the old one;
``routed``
    the gateway sends its requests to the new container; the old instances
    still run, idle;
``moved``
    the old container no longer runs it. The gateway itself is the one
    exception: its old container keeps a forwarding gateway on the public
    address, which passes every request on to the new gateway.

Every command that loads an inventory applies these journals to it, so
plans, deploys, health checks and renders see the layout as it is, not as
the file described it before the moves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PsaInfraError
from .inventory import Container, Inventory, LoadedInventory

STAGES = ("none", "staged", "routed", "moved")
GATEWAY = "api-gateway"
JOURNAL_FORMAT = 1


@dataclass(frozen=True)
class Move:
    """One service's move, as far as its journal says it has gone."""

    service: str
    source: str
    target: Container
    stage: str

    @property
    def forwarder(self) -> bool:
        """Whether the old container keeps a forwarding stage (the gateway)."""
        return self.service == GATEWAY


def journals_dir(state: Path, inventory_name: str) -> Path:
    """The folder holding the migration journals of one inventory."""
    return state / "migrations" / inventory_name


def read_journal(path: Path) -> dict[str, Any]:
    """Read one journal; a damaged one is an error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PsaInfraError(f"{path}: cannot read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PsaInfraError(
            f"{path} line {exc.lineno}: not a migration journal: {exc.msg}",
            hint="restore it from a backup; psa-infra writes journals atomically, "
            "so this file was changed by something else",
        ) from None
    if not isinstance(data, dict) or data.get("format") != JOURNAL_FORMAT:
        raise PsaInfraError(f"{path}: not a psa-infra migration journal")
    return data


def write_journal(path: Path, data: dict[str, Any]) -> None:
    """Replace a journal atomically: a crash leaves the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def moves_of(state: Path, inventory_name: str, skip: str | None = None) -> list[Move]:
    """The moves recorded for an inventory (but ``skip``'s), in the order begun."""
    folder = journals_dir(state, inventory_name)
    if not folder.is_dir():
        return []
    found: list[tuple[str, Move]] = []
    for path in sorted(folder.glob("*.json")):
        if path.stem == skip:
            continue
        data = read_journal(path)
        stage = data.get("stage", "none")
        if stage == "none":
            continue
        if stage not in STAGES:
            raise PsaInfraError(f"{path}: unknown stage {stage!r}")
        try:
            target = Container.model_validate(data["target"]["container"])
            move = Move(data["service"], data["source"]["hostname"], target, stage)
        except (KeyError, TypeError, ValueError) as exc:
            raise PsaInfraError(f"{path}: not a complete journal ({exc})") from None
        found.append((str(data.get("started", "")), move))
    return [move for _, move in sorted(found, key=lambda item: item[0])]


def apply_moves(inventory: Inventory, moves: Iterable[Move]) -> Inventory:
    """The layout an inventory has once ``moves`` are applied to it.

    A service's new container joins the layout from its first stage; the
    gateway's upstream map points at it from ``routed``; from ``moved`` the
    old container no longer holds the service (the gateway's keeps a
    forwarder). An app container left with no service leaves the layout: it
    runs nothing psa-infra manages any more.
    """
    containers = list(inventory.containers)
    routes: dict[str, str] = dict(inventory.routes())
    forwards: dict[str, str] = dict(inventory.forwards())
    index = {c.hostname: i for i, c in enumerate(containers)}
    moved_away: set[str] = set()
    for move in moves:
        if move.stage == "none":
            continue
        spec = move.target.services[move.service]
        at = index.get(move.target.hostname)
        if at is None:
            index[move.target.hostname] = len(containers)
            containers.append(
                move.target.model_copy(update={"services": {move.service: spec}})
            )
        else:
            held = containers[at]
            containers[at] = held.model_copy(
                update={"services": {**held.services, move.service: spec}}
            )
        routes[move.service] = (
            move.source if move.stage == "staged" else move.target.hostname
        )
        if move.forwarder and move.stage != "staged":
            forwards[move.source] = move.target.hostname
        if move.stage == "moved" and not move.forwarder and move.source in index:
            source = containers[index[move.source]]
            left = {k: v for k, v in source.services.items() if k != move.service}
            containers[index[move.source]] = source.model_copy(
                update={"services": left}
            )
            moved_away.add(move.source)
    kept = [
        c
        for c in containers
        if not (c.role == "app" and c.hostname in moved_away and not c.services)
    ]
    result = inventory.model_copy(update={"containers": kept})
    result.set_routing(routes, forwards)
    return result


def with_moves(loaded: LoadedInventory, moves: Iterable[Move]) -> LoadedInventory:
    """A loaded inventory with ``moves`` applied, keeping its document."""
    moves = list(moves)
    moved = LoadedInventory(apply_moves(loaded.inventory, moves), loaded.document)
    moved.warnings = list(loaded.warnings)
    moved.moves = [m for m in moves if m.stage != "none"]
    return moved
