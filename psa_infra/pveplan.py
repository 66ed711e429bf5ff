"""Compare the containers an inventory wants with those a cluster holds.

Pure: desired containers (with their PVE create parameters) and observed
ones (as read from the API) go in, plan actions and conflicts come out; no
I/O. Each container gets one of:

- ``create``: its vmid is free;
- ``update``: what PVE can change in place differs (memory, cores, swap,
  onboot, tags, description, DNS, network, a larger disk, a stopped
  container that should run); details name each attribute, old and new;
- ``replace``: something PVE cannot change in place differs (template,
  storage, a smaller disk, privilege mode); only ``--replace NAME`` acts;
- ``move``: it lives on another node than the inventory says;
- nothing, when it matches.

Containers that carry the inventory's tag but are not in it are listed as
``unmanaged``. A vmid held by something else (another hostname, a VM) is a
conflict, reported rather than planned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .plan import PHASE_CONTAINERS, Action

# Keys of the create parameters that PVE keeps in the container's config and
# can change in place; the rest are create-only or handled apart.
IN_PLACE = (
    "hostname",
    "cores",
    "memory",
    "swap",
    "net0",
    "nameserver",
    "searchdomain",
    "features",
    "onboot",
    "tags",
    "description",
)
# Keys the inventory may leave out; when it does, a value set on the
# container is removed.
OPTIONAL = ("searchdomain", "description")
# PVE's detection of the OS type from a template's file name (pve-container).
OSTYPES = (
    ("debian", "debian"),
    ("devuan", "devuan"),
    ("ubuntu", "ubuntu"),
    ("centos", "centos"),
    ("rockylinux", "centos"),
    ("almalinux", "centos"),
    ("fedora", "fedora"),
    ("opensuse", "opensuse"),
    ("archlinux", "archlinux"),
    ("alpine", "alpine"),
)
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT])?$", re.IGNORECASE)
_UNITS = {"K": 1 / 1024 / 1024, "M": 1 / 1024, "G": 1.0, "T": 1024.0}


@dataclass(frozen=True)
class Desired:
    """A container as the inventory wants it."""

    vmid: int
    hostname: str
    node: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Observed:
    """A guest as the cluster holds it."""

    vmid: int
    name: str
    node: str
    type: str = "lxc"
    status: str = "stopped"
    tags: tuple[str, ...] = ()
    lock: str | None = None
    config: Mapping[str, Any] | None = None


@dataclass
class Diff:
    """What it takes to bring the cluster to the inventory."""

    actions: list[Action] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    def for_host(self, host: str) -> list[Action]:
        """The actions of one container, in the order they apply."""
        return [a for a in self.actions if a.host == host]


def split_props(text: Any) -> tuple[str | None, dict[str, str]]:
    """A PVE property string as (leading bare value, {key: value})."""
    first: str | None = None
    props: dict[str, str] = {}
    for index, part in enumerate(str(text or "").split(",")):
        key, eq, value = part.partition("=")
        if eq:
            props[key.strip()] = value.strip()
        elif part and index == 0:
            first = part.strip()
    return first, props


def join_props(props: Mapping[str, str], first: Sequence[str] = ("name",)) -> str:
    """A property string with ``first`` keys leading, the rest sorted."""
    order = [k for k in first if k in props] + sorted(
        k for k in props if k not in first
    )
    return ",".join(f"{k}={props[k]}" for k in order)


def gib(size: Any) -> float | None:
    """A PVE size (``500G``, ``512M``, a bare number of GiB) in GiB."""
    match = _SIZE.match(str(size).strip())
    if not match:
        return None
    return float(match.group(1)) * _UNITS[(match.group(2) or "G").upper()]


def tag_set(tags: Any) -> frozenset[str]:
    """Tags as PVE compares them: lower case, order and separators ignored."""
    return frozenset(t.lower() for t in re.split(r"[;, ]+", str(tags or "")) if t)


def ostype_of(template: str) -> str:
    """The OS type PVE records for a template, from its file name."""
    name = template.rsplit("/", 1)[-1].lower()
    return next(
        (kind for prefix, kind in OSTYPES if name.startswith(prefix)), "unmanaged"
    )


def arch_of(template: str) -> str:
    match = re.search(r"[_-](amd64|arm64|armhf|riscv64|i386)\b", template)
    return match.group(1) if match else "amd64"


def _flag(value: Any) -> int:
    return 1 if str(value).strip().lower() in ("1", "true", "yes", "on") else 0


def _text(value: Any) -> str:
    # PVE keeps a description as a comment block and hands it back with a
    # trailing newline; the inventory's value has none.
    return str(value).rstrip("\n")


def _same(key: str, want: Any, have: Any) -> bool:
    if key in ("onboot", "unprivileged"):
        # PVE may leave a flag that is off out of the config.
        return _flag(want or 0) == _flag(have or 0)
    if want is None or have is None:
        return (want is None or want == "") and (have is None or have == "")
    if key in ("cores", "memory", "swap"):
        return str(want).strip() == str(have).strip()
    if key == "tags":
        return tag_set(want) == tag_set(have)
    if key == "net0":
        return _net_props(want) == _net_props(have)
    if key == "features":
        return {k: _flag(v) for k, v in split_props(want)[1].items()} == {
            k: _flag(v) for k, v in split_props(have)[1].items()
        }
    if key == "nameserver":
        return str(want).split() == str(have).split()
    return _text(want) == _text(have)


def _net_props(value: Any) -> dict[str, str]:
    """A netN value without the parts PVE fills in itself."""
    props = split_props(value)[1]
    props.pop("hwaddr", None)
    props.setdefault("type", "veth")
    return props


def _new_net(want: Any, have: Any) -> str:
    """The netN value to send: the inventory's, with the interface's MAC kept."""
    props = split_props(want)[1]
    mac = split_props(have)[1].get("hwaddr")
    if mac:
        props["hwaddr"] = mac
    return join_props(props)


def _replace_reasons(want: Mapping[str, Any], have: Mapping[str, Any]) -> list[str]:
    reasons = []
    template = str(want.get("ostemplate", ""))
    if template:
        ostype, arch = ostype_of(template), arch_of(template)
        if have.get("ostype") and have["ostype"] != ostype:
            reasons.append(
                f"template: OS type {have['ostype']} -> {ostype} ({template})"
            )
        if have.get("arch") and have["arch"] != arch:
            reasons.append(f"template: architecture {have['arch']} -> {arch}")
    want_volume, _ = split_props(want.get("rootfs"))
    have_volume, have_props = split_props(have.get("rootfs"))
    want_storage = (want_volume or "").split(":")[0]
    have_storage = (have_volume or "").split(":")[0]
    if want_storage and have_storage and want_storage != have_storage:
        reasons.append(f"storage: {have_storage} -> {want_storage}")
    want_size = gib((want_volume or "").partition(":")[2])
    have_size = gib(have_props.get("size", ""))
    if want_size is not None and have_size is not None and want_size < have_size:
        reasons.append(
            f"disk: {have_size:g} GiB -> {want_size:g} GiB (a disk cannot shrink)"
        )
    if "unprivileged" in want and not _same(
        "unprivileged", want["unprivileged"], have.get("unprivileged", 0)
    ):
        reasons.append(
            f"unprivileged: {_flag(have.get('unprivileged', 0))} -> "
            f"{_flag(want['unprivileged'])}"
        )
    return reasons


def _changes(want: Mapping[str, Any], have: Mapping[str, Any]) -> dict[str, Any]:
    """In-place changes: {key: {"old": ..., "new": value to send or None}}."""
    changes: dict[str, Any] = {}
    for key in IN_PLACE:
        if key not in want:
            if key in OPTIONAL and have.get(key) not in (None, ""):
                changes[key] = {"old": have[key], "new": None}
            continue
        if _same(key, want[key], have.get(key)):
            continue
        new = _new_net(want[key], have.get(key)) if key == "net0" else want[key]
        changes[key] = {"old": have.get(key), "new": new}
    want_volume, _ = split_props(want.get("rootfs"))
    _, have_props = split_props(have.get("rootfs"))
    want_size = gib((want_volume or "").partition(":")[2])
    have_size = gib(have_props.get("size", ""))
    if want_size is not None and have_size is not None and want_size > have_size:
        changes["disk"] = {"old": f"{have_size:g}G", "new": f"{want_size:g}G"}
    return changes


def _show(value: Any) -> str:
    return "(none)" if value is None else str(value)


def diff(
    desired: Iterable[Desired],
    observed: Iterable[Observed],
    tag: str,
    replace: Iterable[str] = (),
) -> Diff:
    """The actions that bring ``observed`` to ``desired``.

    ``replace`` names the containers (hostname or vmid) the operator allows
    to be destroyed and created again when they cannot change in place.
    """
    result = Diff()
    allowed = set(replace)
    by_vmid = {o.vmid: o for o in observed}
    wanted = list(desired)
    for want in wanted:
        have = by_vmid.get(want.vmid)
        if have is None:
            result.actions.append(_create(want))
            continue
        if have.type != "lxc":
            result.conflicts.append(
                f"vmid {want.vmid} ({want.hostname}) is taken by {have.type} guest "
                f"'{have.name}' on {have.node}"
            )
            continue
        if have.name != want.hostname:
            result.conflicts.append(
                f"vmid {want.vmid} is taken by container '{have.name}' on {have.node}, "
                f"not {want.hostname}; psa-infra does not touch a container it did not "
                "create"
            )
            continue
        if have.config is None:
            result.conflicts.append(
                f"container {want.vmid} ({want.hostname}): its config cannot be read "
                f"(node {have.node} unreachable?)"
            )
            continue
        result.actions.extend(_converge(want, have, allowed))
    known = {w.vmid for w in wanted}
    for have in sorted(by_vmid.values(), key=lambda o: o.vmid):
        if have.vmid not in known and have.type == "lxc" and tag in have.tags:
            result.actions.append(
                Action(
                    kind="unmanaged",
                    phase=PHASE_CONTAINERS,
                    host=have.name,
                    vmid=have.vmid,
                    summary=(
                        f"container {have.vmid} on {have.node} carries tag '{tag}' "
                        "but is not in the inventory"
                    ),
                    details={
                        "node": have.node,
                        "reason": "psa-infra leaves it alone; remove it by hand or "
                        "add it to the inventory",
                    },
                )
            )
    return result


def _create(want: Desired) -> Action:
    params = dict(want.params)
    return Action(
        kind="create",
        phase=PHASE_CONTAINERS,
        host=want.hostname,
        vmid=want.vmid,
        summary=(
            f"create container {want.vmid} on {want.node} "
            f"({params.get('cores')} cores, {params.get('memory')} MiB, "
            f"rootfs {params.get('rootfs')})"
        ),
        details={"node": want.node, "params": params},
    )


def _converge(want: Desired, have: Observed, allowed: set[str]) -> list[Action]:
    config = have.config or {}
    reasons = _replace_reasons(want.params, config)
    if reasons:
        granted = want.hostname in allowed or str(want.vmid) in allowed
        return [
            Action(
                kind="replace",
                phase=PHASE_CONTAINERS,
                host=want.hostname,
                vmid=want.vmid,
                summary=(
                    f"replace container {want.vmid} on {have.node}: destroy and "
                    "create again "
                    f"({'allowed by --replace' if granted else 'needs --replace'})"
                ),
                details={
                    "node": have.node,
                    "to_node": want.node,
                    "reason": "; ".join(reasons),
                    "granted": granted,
                    "lock": have.lock,
                    "status": have.status,
                    "params": dict(want.params),
                },
            )
        ]
    actions = []
    if have.node != want.node:
        actions.append(
            Action(
                kind="move",
                phase=PHASE_CONTAINERS,
                host=want.hostname,
                vmid=want.vmid,
                summary=f"move container {want.vmid} from {have.node} to {want.node}",
                details={
                    "from": have.node,
                    "to": want.node,
                    "running": have.status == "running",
                    "lock": have.lock,
                    "reason": f"node {have.node} -> {want.node}"
                    + (" (restarted)" if have.status == "running" else ""),
                },
            )
        )
    changes = _changes(want.params, config)
    if have.status != "running":
        changes["status"] = {"old": have.status, "new": "running"}
    if changes:
        names = ", ".join(changes)
        actions.append(
            Action(
                kind="update",
                phase=PHASE_CONTAINERS,
                host=want.hostname,
                vmid=want.vmid,
                summary=f"update container {want.vmid} in place: {names}",
                details={
                    "node": want.node,
                    "lock": have.lock,
                    "changes": {
                        k: {"old": v["old"], "new": v["new"]}
                        for k, v in changes.items()
                    },
                },
            )
        )
    return actions


def describe_change(key: str, change: Mapping[str, Any]) -> str:
    """One change as ``key: old -> new``."""
    return f"{key}: {_show(change.get('old'))} -> {_show(change.get('new'))}"
