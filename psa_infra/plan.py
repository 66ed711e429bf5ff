"""Plans: what provisioning would do, as an ordered list of actions.

A plan is data with no I/O of its own: the offline plan is built from the
inventory, the rendered files and the playbooks alone; the live plan adds
what was read from the cluster. Both share :class:`Plan` and its JSON form,
whose schema ``docs/plan-format.md`` documents (``format_version`` 1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import connection_budget
from .inventory import Container, LoadedInventory
from .playbooks import Playbook, describe
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
    # Set when part of the cluster could not be read: the plan is not whole.
    incomplete: bool = False

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
            "complete": not self.incomplete,
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
    for playbook, step in renderer.steps(container, playbooks):
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
                # Of the rendering with secrets masked, for secret files.
                sha256=hashlib.sha256(rendered.content.encode()).hexdigest(),
            )
            kind = "file"
        else:
            kind = "step"
        if step.notify:
            details["notify"] = list(step.notify)
        actions.append(
            _host_action(
                container, kind, f"{playbook}: {step.name}: {describe(step)}", details
            )
        )
    return actions


def _host_action(
    container: Container, kind: str, summary: str, details: dict[str, Any]
) -> Action:
    """An action inside a container, in its role's phase."""
    return Action(
        kind=kind,
        phase=phase_of(container),
        host=container.hostname,
        vmid=container.vmid,
        summary=summary,
        details=details,
    )


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
                container,
                inventory.node_of(container),
                renderer.create_params(container),
            )
        )
    ordered = sorted(inventory.containers, key=lambda c: PHASES.index(phase_of(c)))
    for container in ordered:
        plan.actions.extend(setup_actions(container, renderer, playbooks))
    if inventory.by_role("elasticsearch"):
        if inventory.packages.elasticsearch == "elastic":
            plan.notes.append(
                "Elasticsearch is installed from Elastic's package repository, which "
                "must be reachable from its container"
            )
        else:
            plan.notes.append(
                "Elasticsearch is configured but not installed or started: "
                "packages.elasticsearch is 'none'"
            )
    return plan


# Create parameters Proxmox cannot change on an existing container.
REPLACE_KEYS = ("ostemplate", "unprivileged")


def _rootfs(value: Any) -> tuple[str, int]:
    storage, _, size = str(value).partition(":")
    try:
        return storage, int(size.split(",")[0].removesuffix("G"))
    except ValueError:
        return storage, 0


def _replace_reason(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    for key in REPLACE_KEYS:
        if key in old and old.get(key) != new.get(key):
            return f"{key} cannot be changed on an existing container"
    old_storage, old_size = _rootfs(old.get("rootfs", ""))
    new_storage, new_size = _rootfs(new.get("rootfs", ""))
    if old_storage != new_storage:
        return f"root disk storage changes from {old_storage} to {new_storage}"
    if new_size < old_size:
        return f"root disk shrinks from {old_size} to {new_size} GiB"
    return None


def compare_with_baseline(
    current: Plan, baseline: Mapping[str, Any], source: str
) -> Plan:
    """Keep only what differs from a baseline plan of the same kind.

    ``baseline`` is the JSON of an offline plan made from another revision
    of the project (typically the branch a merge request targets); the result
    says what the change would do to a cluster already at that revision.
    """
    from .errors import PsaInfraError

    if (
        baseline.get("format_version") != FORMAT_VERSION
        or baseline.get("mode") != "offline"
    ):
        raise PsaInfraError(
            f"{source} is not an offline plan in format {FORMAT_VERSION}",
            hint="make it with: psa-infra plan --offline --json INVENTORY > FILE",
        )
    old_actions = baseline.get("actions", [])
    old_created = {a["vmid"]: a for a in old_actions if a.get("kind") == "create"}
    old_files = {
        (a["host"], a["details"].get("dest")): a
        for a in old_actions
        if a.get("kind") == "file"
    }
    old_steps = {
        (a["host"], a["summary"]) for a in old_actions if a.get("kind") == "step"
    }
    result = Plan(
        inventory=current.inventory,
        name=current.name,
        mode="offline",
        warnings=current.warnings,
        facts={**current.facts, "baseline": source},
        notes=[f"compared with the plan in {source}: only differences are shown"],
    )
    current_vmids = set()
    for action in current.actions:
        if action.kind == "create":
            current_vmids.add(action.vmid)
            before = old_created.get(action.vmid)
            if before is None:
                result.actions.append(action)
                continue
            old_params = before["details"].get("params", {})
            new_params = action.details.get("params", {})
            changes = {
                key: {"old": old_params.get(key), "new": new_params.get(key)}
                for key in sorted(set(old_params) | set(new_params))
                if old_params.get(key) != new_params.get(key)
            }
            if not changes:
                continue
            reason = _replace_reason(old_params, new_params)
            result.actions.append(
                Action(
                    kind="replace" if reason else "update",
                    phase=PHASE_CONTAINERS,
                    host=action.host,
                    vmid=action.vmid,
                    summary=(
                        f"replace container {action.vmid}: {reason}"
                        if reason
                        else f"update container {action.vmid}: {', '.join(changes)}"
                    ),
                    details={
                        "changes": changes,
                        **({"reason": reason} if reason else {}),
                    },
                )
            )
        elif action.kind == "file":
            before = old_files.get((action.host, action.details.get("dest")))
            keys = ("sha256", "mode", "owner", "group")
            if before is None or any(
                before["details"].get(k) != action.details.get(k) for k in keys
            ):
                result.actions.append(action)
        elif action.kind == "step":
            if (action.host, action.summary) not in old_steps:
                result.actions.append(action)
    for vmid, before in sorted(old_created.items()):
        if vmid not in current_vmids:
            result.actions.append(
                Action(
                    kind="unmanaged",
                    phase=PHASE_CONTAINERS,
                    host=before["host"],
                    vmid=vmid,
                    summary=f"container {vmid} ({before['host']}) left the inventory",
                    details={
                        "reason": "psa-infra never destroys a container; remove it by "
                        "hand once its data is safe"
                    },
                )
            )
    return result


def host_actions(container: Container, outcomes: Sequence[Any]) -> list[Action]:
    """Plan actions from a dry run of a host's steps: what would change there.

    ``outcomes`` are the dry run's step outcomes (status, playbook, step,
    detail, diff, kind); only changes become actions.
    """
    actions = []
    for outcome in outcomes:
        if outcome.status != "changed":
            continue
        details: dict[str, Any] = {"playbook": outcome.playbook, "step": outcome.step}
        if outcome.diff:
            details["diff"] = outcome.diff
        actions.append(
            _host_action(
                container,
                "file" if outcome.kind == "file" else "step",
                f"{outcome.playbook}: {outcome.step}: {outcome.detail}",
                details,
            )
        )
    return actions
