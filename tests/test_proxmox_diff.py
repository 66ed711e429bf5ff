"""The pure diff of desired and observed containers (psa_infra.pveplan)."""

from __future__ import annotations

from typing import Any

import pytest

from psa_infra.pveplan import Desired, Observed, diff, gib, split_props

PARAMS: dict[str, Any] = {
    "vmid": 110,
    "hostname": "psa-redis",
    "ostemplate": "local:vztmpl/debian-12-standard_12.0-1_amd64.tar.zst",
    "cores": 2,
    "memory": 4096,
    "swap": 512,
    "rootfs": "local-lvm:10",
    "net0": "name=eth0,bridge=vmbr20,ip=10.0.20.20/24,gw=10.0.20.1,type=veth",
    "nameserver": "10.0.20.1",
    "searchdomain": "psa.internal",
    "features": "nesting=1",
    "unprivileged": 1,
    "onboot": 1,
    "tags": "psa;redis",
    "description": "Redis 7",
    "ssh-public-keys": "ssh-ed25519 AAAA test",
}
# The config PVE shows for a container created with PARAMS.
CONFIG: dict[str, Any] = {
    "hostname": "psa-redis",
    "cores": 2,
    "memory": 4096,
    "swap": 512,
    "net0": "name=eth0,bridge=vmbr20,gw=10.0.20.1,hwaddr=BC:24:11:00:00:01,"
    "ip=10.0.20.20/24,type=veth",
    "nameserver": "10.0.20.1",
    "searchdomain": "psa.internal",
    "features": "nesting=1",
    "onboot": 1,
    "tags": "psa;redis",
    "description": "Redis 7\n",
    "rootfs": "local-lvm:vm-110-disk-0,size=10G",
    "unprivileged": 1,
    "ostype": "debian",
    "arch": "amd64",
    "digest": "0" * 40,
}


def want(node: str = "pve", **params: Any) -> Desired:
    return Desired(110, "psa-redis", node, {**PARAMS, **params})


def have(
    node: str = "pve", status: str = "running", lock: str | None = None, **config: Any
) -> Observed:
    merged = {k: v for k, v in {**CONFIG, **config}.items() if v is not None}
    return Observed(
        110, "psa-redis", node, "lxc", status, ("psa", "redis"), lock, merged
    )


def kinds(desired: list[Desired], observed: list[Observed]) -> list[str]:
    return [a.kind for a in diff(desired, observed, "psa").actions]


def test_missing_container_is_created_with_every_parameter() -> None:
    (action,) = diff([want()], [], "psa").actions
    assert action.kind == "create"
    assert action.details == {"node": "pve", "params": PARAMS}


def test_matching_container_needs_nothing() -> None:
    # Order of tags, a trailing newline in the description and the MAC PVE
    # added are not drift.
    assert kinds([want()], [have(tags="redis;psa")]) == []


@pytest.mark.parametrize(
    ("config", "key", "old", "new"),
    [
        ({"memory": "2048"}, "memory", "2048", 4096),
        ({"cores": 1}, "cores", 1, 2),
        ({"swap": 0}, "swap", 0, 512),
        ({"onboot": 0}, "onboot", 0, 1),
        ({"tags": "psa;redis;old"}, "tags", "psa;redis;old", "psa;redis"),
        ({"description": "cache"}, "description", "cache", "Redis 7"),
        ({"nameserver": "1.1.1.1"}, "nameserver", "1.1.1.1", "10.0.20.1"),
        ({"searchdomain": None}, "searchdomain", None, "psa.internal"),
    ],
)
def test_drift_is_updated_in_place(
    config: dict[str, Any], key: str, old: Any, new: Any
) -> None:
    (action,) = diff([want()], [have(**config)], "psa").actions
    assert action.kind == "update"
    assert action.details["changes"] == {key: {"old": old, "new": new}}


def test_changed_network_keeps_the_interface_mac() -> None:
    wanted = want(
        net0="name=eth0,bridge=vmbr20,ip=10.0.20.21/24,gw=10.0.20.1,type=veth"
    )
    (action,) = diff([wanted], [have()], "psa").actions
    change = action.details["changes"]["net0"]
    assert split_props(change["new"])[1] == {
        "name": "eth0",
        "bridge": "vmbr20",
        "ip": "10.0.20.21/24",
        "gw": "10.0.20.1",
        "type": "veth",
        "hwaddr": "BC:24:11:00:00:01",
    }


def test_flag_that_is_off_may_be_missing_from_the_config() -> None:
    assert kinds([want(onboot=0)], [have(onboot=None)]) == []
    assert kinds([want(onboot=0)], [have(onboot=1)]) == ["update"]


def test_value_removed_from_the_inventory_is_deleted() -> None:
    params = {k: v for k, v in PARAMS.items() if k != "description"}
    (action,) = diff(
        [Desired(110, "psa-redis", "pve", params)], [have()], "psa"
    ).actions
    assert action.details["changes"] == {
        "description": {"old": "Redis 7\n", "new": None}
    }


def test_larger_disk_grows_in_place_and_a_stopped_container_is_started() -> None:
    (action,) = diff(
        [want(rootfs="local-lvm:20")], [have(status="stopped")], "psa"
    ).actions
    assert action.kind == "update"
    assert action.details["changes"] == {
        "disk": {"old": "10G", "new": "20G"},
        "status": {"old": "stopped", "new": "running"},
    }


@pytest.mark.parametrize(
    ("params", "config", "reason"),
    [
        ({"rootfs": "local-lvm:5"}, {}, "disk: 10 GiB -> 5 GiB (a disk cannot shrink)"),
        ({"rootfs": "ceph:10"}, {}, "storage: local-lvm -> ceph"),
        (
            {"ostemplate": "local:vztmpl/ubuntu-24.04-standard_24.04-2_amd64.tar.zst"},
            {},
            "template: OS type debian -> ubuntu",
        ),
        ({"unprivileged": 0}, {}, "unprivileged: 1 -> 0"),
        ({}, {"arch": "arm64"}, "template: architecture arm64 -> amd64"),
    ],
)
def test_what_cannot_change_in_place_needs_replace(
    params: dict[str, Any], config: dict[str, Any], reason: str
) -> None:
    (action,) = diff([want(**params)], [have(**config)], "psa").actions
    assert action.kind == "replace"
    assert reason in action.details["reason"]
    assert action.details["granted"] is False
    granted = diff([want(**params)], [have(**config)], "psa", replace=["psa-redis"])
    assert granted.actions[0].details["granted"] is True


def test_new_node_is_a_move_then_the_update() -> None:
    actions = diff([want(node="pve2", cores=4)], [have(node="pve")], "psa").actions
    assert [a.kind for a in actions] == ["move", "update"]
    assert actions[0].details["from"] == "pve"
    assert actions[0].details["to"] == "pve2"
    assert actions[0].details["running"] is True
    assert actions[1].details["node"] == "pve2"


def test_vmid_of_another_guest_is_a_conflict() -> None:
    other = Observed(110, "someone-else", "pve", "lxc", "running", (), None, CONFIG)
    vm = Observed(110, "win", "pve", "qemu", "running", (), None, None)
    assert (
        "taken by container 'someone-else'"
        in diff([want()], [other], "psa").conflicts[0]
    )
    assert "taken by qemu guest 'win'" in diff([want()], [vm], "psa").conflicts[0]
    assert diff([want()], [other], "psa").actions == []


def test_tagged_container_outside_the_inventory_is_unmanaged() -> None:
    stray = Observed(160, "psa-old", "pve", "lxc", "running", ("psa",), None, {})
    untagged = Observed(161, "mine", "pve", "lxc", "running", ("other",), None, {})
    result = diff([want()], [have(), stray, untagged], "psa")
    assert [(a.kind, a.vmid) for a in result.actions] == [("unmanaged", 160)]


@pytest.mark.parametrize(
    ("text", "size"), [("500G", 500.0), ("512M", 0.5), ("1T", 1024.0), ("8", 8.0)]
)
def test_sizes(text: str, size: float) -> None:
    assert gib(text) == size
