"""Plans: what provisioning would do, as an ordered list of actions.

A plan is data with no I/O of its own: the offline plan is built from the
inventory, the rendered files and the playbooks alone; the live plan adds
what was read from the cluster. Both share :class:`Plan` and its JSON form,
whose schema ``docs/plan-format.md`` documents (``format_version`` 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .checks import connection_budget
from .inventory import Container, LoadedInventory
from .playbooks import Playbook, describe, steps_for
from .render import Renderer

FORMAT_VERSION = 1

# Phases in the order provisioning works through them.
PHASE_CONTAINERS = "containers"
PHASE_DATA = "data services"
PHASE_APP = "app"
PHASES = (PHASE_CONTAINERS, PHASE_DATA, PHASE_APP)

# Container actions change the cluster; the rest change a host's contents.
CONTAINER_ACTIONS = ("create", "update", "replace", "move", "unmanaged")


@dataclass(frozen=True)
class Action:
    """One thing provisioning would do."""

    kind: str
    phase: str
    host: str
    summary: str
    vmid: int | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The action in the plan's JSON schema."""
        return {
            "kind": self.kind,
            "phase": self.phase,
            "host": self.host,
            "vmid": self.vmid,
            "summary": self.summary,
            "details": dict(self.details),
        }


@dataclass
class Plan:
    """An ordered list of actions for one inventory."""

    inventory: str
    name: str
    mode: str
    actions: list[Action] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def has_changes(self) -> bool:
        """Whether applying the plan would change anything."""
        return any(a.kind != "unmanaged" for a in self.actions)

    def counts(self) -> dict[str, int]:
        """Number of actions of each kind, in a stable order."""
        counts: dict[str, int] = {}
        for action in self.actions:
            counts[action.kind] = counts.get(action.kind, 0) + 1
        return dict(sorted(counts.items()))

    def as_json(self) -> dict[str, Any]:
        """The whole plan in its documented JSON schema."""
        return {
            "format_version": FORMAT_VERSION,
            "inventory": self.inventory,
            "name": self.name,
            "mode": self.mode,
            "changes": self.has_changes,
            "summary": self.counts(),
            "facts": self.facts,
            "warnings": self.warnings,
            "notes": self.notes,
            "actions": [a.as_json() for a in self.actions],
        }


def phase_of(container: Container) -> str:
    """Data services are set up before the app that needs them."""
    return PHASE_APP if container.role == "app" else PHASE_DATA


def budget_facts(loaded: LoadedInventory) -> dict[str, Any]:
    """The PostgreSQL connection budget, as plans show it."""
    postgres = loaded.inventory.postgresql
    instances, demand, needed = connection_budget(loaded.inventory)
    return {
        "pm2_instances": instances,
        "pool_max": postgres.pool.max,
        "app_connections": demand,
        "reserved_connections": postgres.reserved_connections,
        "needed": needed,
        "max_connections": postgres.max_connections,
        "headroom": postgres.max_connections - needed,
    }


def create_action(container: Container, node: str, params: Mapping[str, Any]) -> Action:
    """The action that creates a container with ``params``."""
    return Action(
        kind="create",
        phase=PHASE_CONTAINERS,
        host=container.hostname,
        vmid=container.vmid,
        summary=(
            f"create container {container.vmid} on {node} "
            f"({container.cores} cores, {container.memory} MiB, {container.disk} GiB)"
        ),
        details={"node": node, "params": dict(params)},
    )


def setup_actions(
    container: Container, renderer: Renderer, playbooks: Mapping[str, Playbook]
) -> list[Action]:
    """The file and step actions that set up one container, in order."""
    files = {f.dest: f for f in renderer.files(container, playbooks, reveal=False)}
    actions = []
    for playbook, step in steps_for(dict(playbooks), container.role):
        details: dict[str, Any] = {"playbook": playbook, "step": step.name}
        if step.file is not None:
            rendered = files.get(step.file.dest)
            if rendered is None:
                continue
            details.update(
                dest=rendered.dest,
                owner=rendered.owner,
                group=rendered.group,
                mode=rendered.mode,
                template=rendered.template,
                size=len(rendered.content.encode()),
                secret=rendered.secret,
            )
            if not rendered.secret:
                details["sha256"] = hashlib.sha256(rendered.content.encode()).hexdigest()
            kind = "file"
        else:
            kind = "step"
        if step.notify:
            details["notify"] = list(step.notify)
        actions.append(
            Action(
                kind=kind,
                phase=phase_of(container),
                host=container.hostname,
                vmid=container.vmid,
                summary=f"{playbook}: {step.name}: {describe(step)}",
                details=details,
            )
        )
    return actions


def offline_plan(
    loaded: LoadedInventory,
    renderer: Renderer,
    playbooks: Mapping[str, Playbook],
    shown_path: str,
) -> Plan:
    """Everything provisioning does on an empty cluster, in dependency order."""
    inventory = loaded.inventory
    plan = Plan(
        inventory=shown_path,
        name=inventory.name,
        mode="offline",
        warnings=list(loaded.warnings),
        facts={"connection_budget": budget_facts(loaded)},
        notes=[
            "offline plan: the cluster was not read, so every container is shown "
            "as created and every file and step as applied",
        ],
    )
    for container in inventory.containers:
        plan.actions.append(
            create_action(
                container, inventory.node_of(container), renderer.create_params(container)
            )
        )
    ordered = sorted(inventory.containers, key=lambda c: PHASES.index(phase_of(c)))
    for container in ordered:
        plan.actions.extend(setup_actions(container, renderer, playbooks))
    if inventory.by_role("elasticsearch"):
        plan.notes.append(
            "Elasticsearch is installed from Elastic's package repository, which must "
            "be reachable from its container"
        )
    return plan
