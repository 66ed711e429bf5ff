"""Bring the cluster's containers to the inventory through the Proxmox API.

Stages, each finished before the next starts:

1. ``observe``: read nodes, storages, templates, bridges and guests;
2. ``pveplan.diff``: compare (pure), giving the actions;
3. ``preflight``: every reason the actions cannot run, gathered together;
   nothing has been written until all of them pass;
4. ``apply``: fetch a missing template, then work through each container's
   actions, containers in parallel.

A converged cluster gives no action, so a re-run writes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .errors import PlanConflictError, ProxmoxError, PsaInfraError
from .inventory import LoadedInventory
from .plan import Action, Plan
from .proxmox import Client
from .pveplan import Desired, Diff, Observed, diff, split_props, tag_set
from .render import Renderer

log = logging.getLogger(__name__)

DEFAULT_PARALLEL = 4
DEFAULT_TASK_TIMEOUT = 600.0
# What a finished action of each kind is reported as.
DONE = {
    "create": "created",
    "update": "updated",
    "move": "moved",
    "replace": "replaced",
}

Step = Callable[[str, str], None]


@dataclass
class Cluster:
    """What was read from the cluster before planning."""

    nodes: dict[str, bool] = field(default_factory=dict)
    guests: list[Observed] = field(default_factory=list)
    storages: dict[str, dict[str, Mapping[str, Any]]] = field(default_factory=dict)
    templates: dict[str, set[str]] = field(default_factory=dict)
    bridges: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class Outcome:
    """What provisioning did to one container."""

    host: str
    vmid: int | None
    node: str
    actions: list[str]
    result: str
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The outcome as ``provision --json`` prints it."""
        return {
            "host": self.host,
            "vmid": self.vmid,
            "node": self.node,
            "actions": self.actions,
            "result": self.result,
            "seconds": round(self.seconds, 2),
            "warnings": self.warnings,
            "error": self.error,
        }


def desired_of(
    loaded: LoadedInventory, renderer: Renderer, only: Sequence[str] = ()
) -> list[Desired]:
    """The containers to provision with their create parameters.

    Rendering happens here, before any request, so a bad template or
    inventory never reaches the API.
    """
    inventory = loaded.inventory
    containers = [inventory.find(k) for k in only] if only else inventory.containers
    out = []
    seen: set[int] = set()
    for container in containers:
        if container.vmid in seen:
            continue
        seen.add(container.vmid)
        params = renderer.create_params(container)
        out.append(
            Desired(
                vmid=container.vmid,
                hostname=container.hostname,
                node=inventory.node_of(container),
                params=params,
            )
        )
    return out


# ------------------------------------------------------------------ observe


def observe(
    client: Client, loaded: LoadedInventory, desired: Sequence[Desired], parallel: int
) -> Cluster:
    """Read what planning and preflight need; reads only."""
    inventory = loaded.inventory
    cluster = Cluster()
    for item in client.get("/nodes") or []:
        cluster.nodes[str(item["node"])] = item.get("status") == "online"
    wanted = {d.vmid for d in desired}
    tag = inventory.proxmox.tag
    resources = client.get("/cluster/resources", {"type": "vm"}) or []
    mine = [
        r
        for r in resources
        if r.get("type") in ("lxc", "qemu")
        and (int(r["vmid"]) in wanted or tag in tag_set(r.get("tags")))
    ]

    def read(resource: Mapping[str, Any]) -> Observed:
        node, vmid = str(resource["node"]), int(resource["vmid"])
        config = None
        if resource["type"] == "lxc" and cluster.nodes.get(node):
            config = client.get(f"/nodes/{node}/lxc/{vmid}/config")
        return Observed(
            vmid=vmid,
            name=str(resource.get("name") or ""),
            node=node,
            type=str(resource["type"]),
            status=str(resource.get("status") or "unknown"),
            tags=tuple(sorted(tag_set(resource.get("tags")))),
            lock=resource.get("lock") or (config or {}).get("lock") or None,
            config=config,
        )

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        cluster.guests = list(pool.map(read, mine))

    for node in sorted({d.node for d in desired}):
        if not cluster.nodes.get(node):
            continue
        storages = client.get(f"/nodes/{node}/storage") or []
        cluster.storages[node] = {str(s["storage"]): s for s in storages}
        cluster.bridges[node] = {
            str(i["iface"])
            for i in client.get(f"/nodes/{node}/network") or []
            if "bridge" in str(i.get("type", "")).lower()
        }
        template_storage = inventory.proxmox.template_storage
        store = cluster.storages[node].get(template_storage)
        # An inactive storage cannot list its content; preflight reports it.
        if store and store.get("enabled", 1) and store.get("active", 1):
            content = client.get(
                f"/nodes/{node}/storage/{template_storage}/content",
                {"content": "vztmpl"},
            )
            cluster.templates[node] = {str(v["volid"]) for v in content or []}
    return cluster


# ---------------------------------------------------------------- preflight


def preflight(
    loaded: LoadedInventory, desired: Sequence[Desired], cluster: Cluster, result: Diff
) -> tuple[list[str], list[str]]:
    """Return (problems, templates to download as ``node``) for a diff."""
    proxmox = loaded.inventory.proxmox
    problems = list(result.conflicts)
    downloads: list[str] = []
    by_host = {d.hostname: d for d in desired}
    needs_template = set()
    for action in result.actions:
        if action.kind in ("create", "replace"):
            want = by_host[action.host]
            needs_template.add(want.node)
        if action.kind == "replace" and not action.details.get("granted"):
            problems.append(
                f"{action.host} ({action.vmid}) cannot change in place: "
                f"{action.details['reason']}; re-run with --replace {action.host} to "
                "destroy and create it again (its data is lost), or change the "
                "inventory"
            )
        lock = action.details.get("lock")
        if lock and action.kind in ("update", "move", "replace"):
            problems.append(
                f"{action.host} ({action.vmid}) is locked ({lock}) and needs a change; "
                f"wait for the {lock} to end, or clear a stale lock with "
                f"'pct unlock {action.vmid}' on its node"
            )
        if action.kind == "move" and not cluster.nodes.get(str(action.details["from"])):
            problems.append(
                f"{action.host} ({action.vmid}) is to move from node "
                f"{action.details['from']}, which is offline"
            )

    nodes = sorted({d.node for d in desired})
    for node in nodes:
        hosts = ", ".join(d.hostname for d in desired if d.node == node)
        if node not in cluster.nodes:
            known = ", ".join(sorted(cluster.nodes)) or "none"
            problems.append(
                f"node {node} (for {hosts}) is not in the cluster (nodes: {known})"
            )
            continue
        if not cluster.nodes[node]:
            problems.append(f"node {node} (for {hosts}) is offline")
            continue
        storages = cluster.storages.get(node, {})
        problems.extend(_storage_problems(node, storages, proxmox.storage, "rootdir"))
        problems.extend(
            _storage_problems(node, storages, proxmox.template_storage, "vztmpl")
        )
        users: dict[str, list[str]] = {}
        for want in desired:
            if want.node == node:
                users.setdefault(_bridge(want), []).append(want.hostname)
        for bridge in sorted(users):
            if bridge and bridge not in cluster.bridges.get(node, set()):
                problems.append(
                    f"bridge {bridge} does not exist on node {node} (for "
                    f"{', '.join(users[bridge])}); create it in "
                    f"/etc/network/interfaces on {node}"
                )
        if node in needs_template and proxmox.template_storage in storages:
            if proxmox.template_volume not in cluster.templates.get(node, set()):
                if proxmox.template_url:
                    downloads.append(node)
                else:
                    problems.append(
                        f"template {proxmox.template_volume} is not on node {node}; "
                        f"download it there (pveam download {proxmox.template_storage} "
                        f"{proxmox.template}) or set proxmox.template_url in the "
                        "inventory"
                    )
    return problems, downloads


def _bridge(want: Desired) -> str:
    return split_props(want.params.get("net0"))[1].get("bridge", "")


def _storage_problems(
    node: str, storages: Mapping[str, Mapping[str, Any]], name: str, content: str
) -> list[str]:
    store = storages.get(name)
    if store is None:
        known = ", ".join(sorted(storages)) or "none"
        return [f"storage {name} does not exist on node {node} (storages: {known})"]
    if not store.get("enabled", 1) or not store.get("active", 1):
        return [f"storage {name} is not active on node {node}"]
    if content not in str(store.get("content", "")).split(","):
        return [f"storage {name} on node {node} does not hold '{content}' content"]
    return []


# --------------------------------------------------------------------- plan


def live_plan(
    loaded: LoadedInventory, shown_path: str, result: Diff, problems: list[str]
) -> Plan:
    """The plan of container actions read against the cluster."""
    return Plan(
        inventory=shown_path,
        name=loaded.inventory.name,
        mode="live",
        actions=list(result.actions),
        warnings=list(loaded.warnings) + problems,
    )


def read_plan(
    client: Client,
    loaded: LoadedInventory,
    renderer: Renderer,
    only: Sequence[str] = (),
    replace: Iterable[str] = (),
    parallel: int = DEFAULT_PARALLEL,
) -> tuple[list[Desired], Cluster, Diff, list[str], list[str]]:
    """Observe, diff and preflight: (desired, cluster, diff, problems, downloads)."""
    desired = desired_of(loaded, renderer, only)
    granted = list(replace)
    for key in granted:
        loaded.inventory.find(key)
    cluster = observe(client, loaded, desired, parallel)
    result = diff(desired, cluster.guests, loaded.inventory.proxmox.tag, granted)
    # With --only, the inventory's other containers are not strays.
    listed = {c.vmid for c in loaded.inventory.containers}
    result.actions = [
        a for a in result.actions if not (a.kind == "unmanaged" and a.vmid in listed)
    ]
    problems, downloads = preflight(loaded, desired, cluster, result)
    return desired, cluster, result, problems, downloads


# -------------------------------------------------------------------- apply


class Applier:
    """Carries out a diff, container by container."""

    def __init__(
        self,
        client: Client,
        loaded: LoadedInventory,
        task_timeout: float = DEFAULT_TASK_TIMEOUT,
        on_step: Step | None = None,
    ) -> None:
        self.client = client
        self.loaded = loaded
        self.timeout = task_timeout
        self.on_step = on_step or (lambda host, text: None)
        self.slots = threading.BoundedSemaphore(DEFAULT_PARALLEL)

    def download_templates(self, nodes: Sequence[str]) -> None:
        """Fetch the template onto each node that lacks it."""
        proxmox = self.loaded.inventory.proxmox
        for node in nodes:
            data: dict[str, Any] = {
                "url": proxmox.template_url,
                "filename": proxmox.template,
                "content": "vztmpl",
            }
            if proxmox.template_sha256:
                data.update(
                    checksum=proxmox.template_sha256, **{"checksum-algorithm": "sha256"}
                )
            log.info("[%s] downloading template %s", node, proxmox.template)
            path = f"/nodes/{node}/storage/{proxmox.template_storage}/download-url"
            upid = self.client.post(
                path, data, resolve=self._task_since(node, None, "download")
            )
            self.client.wait_task(
                upid, f"download of {proxmox.template} to {node}", self.timeout
            )

    def run(self, result: Diff, parallel: int) -> list[Outcome]:
        """Apply every container's actions.

        At most ``parallel`` heavy tasks (create, destroy, move, resize) run
        at once; the quick steps around them (start, config) take no slot,
        so the next heavy task begins as soon as one ends.
        """
        hosts = list(
            dict.fromkeys(a.host for a in result.actions if a.kind != "unmanaged")
        )
        self.slots = threading.BoundedSemaphore(max(1, parallel))
        workers = max(1, min(len(hosts), 2 * parallel))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda h: self._container(result.for_host(h)), hosts))

    def _container(self, actions: list[Action]) -> Outcome:
        first = actions[0]
        started = time.monotonic()
        outcome = Outcome(
            host=first.host,
            vmid=first.vmid,
            node=str(
                first.details.get("to_node")
                or first.details.get("to")
                or first.details.get("node")
            ),
            actions=[a.kind for a in actions],
            result="",
        )
        try:
            for action in actions:
                getattr(self, "_" + action.kind)(action, outcome)
            outcome.result = ", ".join(DONE[a.kind] for a in actions)
            self.on_step(first.host, outcome.result)
        except PsaInfraError as exc:
            outcome.result = "failed"
            outcome.error = exc.message
            self.on_step(first.host, "failed")
            log.error("[%s] %s", first.host, exc.message)
        outcome.seconds = time.monotonic() - started
        return outcome

    # Each action kind; ``outcome`` collects task warnings.

    def _create(self, action: Action, outcome: Outcome) -> None:
        node = str(action.details["node"])
        self._make(
            action.host, int(action.vmid or 0), node, action.details["params"], outcome
        )

    def _make(
        self,
        host: str,
        vmid: int,
        node: str,
        params: Mapping[str, Any],
        outcome: Outcome,
    ) -> None:
        with self.slots:
            self.on_step(host, f"creating on {node}")
            upid = self.client.post(
                f"/nodes/{node}/lxc",
                dict(params),
                resolve=self._task_since(node, vmid, "vzcreate"),
            )
            self._wait(upid, f"create {host} ({vmid})", outcome)
        self._start(host, vmid, node, outcome)

    def _start(self, host: str, vmid: int, node: str, outcome: Outcome) -> None:
        self.on_step(host, "starting")
        upid = self.client.post(
            f"/nodes/{node}/lxc/{vmid}/status/start",
            resolve=self._task_since(node, vmid, "vzstart"),
        )
        self._wait(upid, f"start {host} ({vmid})", outcome)

    def _update(self, action: Action, outcome: Outcome) -> None:
        node, vmid = str(action.details["node"]), int(action.vmid or 0)
        changes: Mapping[str, Mapping[str, Any]] = action.details["changes"]
        base = f"/nodes/{node}/lxc/{vmid}"
        config = {
            k: c["new"] for k, c in changes.items() if k not in ("disk", "status")
        }
        if config:
            self.on_step(action.host, "updating " + ", ".join(config))
            data = {k: v for k, v in config.items() if v is not None}
            deletes = sorted(k for k, v in config.items() if v is None)
            if deletes:
                data["delete"] = ",".join(deletes)
            self.client.put(base + "/config", data)
        if "disk" in changes:
            with self.slots:
                self.on_step(action.host, f"growing disk to {changes['disk']['new']}")
                upid = self.client.put(
                    base + "/resize",
                    {"disk": "rootfs", "size": changes["disk"]["new"]},
                    resolve=self._task_since(node, vmid, "resize"),
                )
                # Before PVE 8 a resize answered at once, without a task.
                if isinstance(upid, str) and upid.startswith("UPID:"):
                    self._wait(upid, f"resize {action.host} ({vmid})", outcome)
        if "status" in changes:
            self._start(action.host, vmid, node, outcome)

    def _move(self, action: Action, outcome: Outcome) -> None:
        source, target = str(action.details["from"]), str(action.details["to"])
        vmid = int(action.vmid or 0)
        self.on_step(action.host, f"moving {source} -> {target}")
        data: dict[str, Any] = {"target": target}
        if action.details.get("running"):
            data["restart"] = 1
        with self.slots:
            upid = self.client.post(
                f"/nodes/{source}/lxc/{vmid}/migrate",
                data,
                resolve=self._task_since(source, vmid, "vzmigrate"),
            )
            self._wait(upid, f"move {action.host} ({vmid}) to {target}", outcome)

    def _replace(self, action: Action, outcome: Outcome) -> None:
        node, vmid = str(action.details["node"]), int(action.vmid or 0)
        base = f"/nodes/{node}/lxc/{vmid}"
        if action.details.get("status") == "running":
            self.on_step(action.host, "stopping")
            upid = self.client.post(
                base + "/status/stop", resolve=self._task_since(node, vmid, "vzstop")
            )
            self._wait(upid, f"stop {action.host} ({vmid})", outcome)
        with self.slots:
            self.on_step(action.host, "destroying")
            upid = self.client.delete(
                base, {"purge": 1, "destroy-unreferenced-disks": 1}
            )
            self._wait(upid, f"destroy {action.host} ({vmid})", outcome)
        target = str(action.details.get("to_node") or node)
        self._make(action.host, vmid, target, action.details["params"], outcome)

    def _wait(self, upid: Any, what: str, outcome: Outcome) -> None:
        if not isinstance(upid, str):
            raise ProxmoxError(
                f"{what}: the API answered {upid!r} instead of a task id"
            )
        done = self.client.wait_task(upid, what, self.timeout)
        outcome.warnings.extend(f"{what}: {w}" for w in done.warnings)

    def _task_since(
        self, node: str, vmid: int | None, kind: str
    ) -> Callable[[float], str | None]:
        return task_since(self.client, node, vmid, kind)


def task_since(
    client: Client, node: str, vmid: int | None, kind: str
) -> Callable[[float], str | None]:
    """A resolver for a lost answer: the UPID of the task it started, if any."""

    def resolve(since: float) -> str | None:
        params: dict[str, Any] = {"typefilter": kind, "source": "all", "limit": 20}
        params["since"] = int(since)
        if vmid is not None:
            params["vmid"] = vmid
        for task in client.get(f"/nodes/{node}/tasks", params) or []:
            # Filtered here too: not every PVE version honours every filter.
            if task.get("type") == kind and int(task.get("starttime", 0)) >= int(since):
                if vmid is None or str(task.get("id")) == str(vmid):
                    return str(task["upid"])
        return None

    return resolve


def check_ready(problems: list[str]) -> None:
    """Stop, naming every problem, when preflight found any."""
    if not problems:
        return
    listed = "\n".join(f"  - {p}" for p in problems)
    raise PlanConflictError(
        f"preflight found {len(problems)} problem{'s' if len(problems) > 1 else ''}; "
        f"nothing was changed:\n{listed}",
        hint="fix these, then run psa-infra provision again",
    )
