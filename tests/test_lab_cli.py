"""The lab's commands without a lab, and its pure parts: LXC config and firewall.

These run anywhere, fast; the lab itself is tested in test_lab.py (marker lab).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from psa_lab import containers, host
from psa_lab.errors import LabError

ROOT = Path(__file__).resolve().parent.parent

# psa-app as the fake API keeps it after `psa-infra provision` created it.
APP_CONFIG = {
    "hostname": "psa-app",
    "cores": 8,
    "memory": 16384,
    "swap": 512,
    "net0": "name=eth0,bridge=vmbr20,gw=10.0.20.1,hwaddr=BC:24:11:67:51:DF,"
    "ip=10.0.20.50/24,type=veth",
    "nameserver": "10.0.20.1",
    "searchdomain": "psa.internal",
    "features": "nesting=1",
    "rootfs": "local-lvm:vm-150-disk-0,size=100G",
    "unprivileged": 1,
    "arch": "amd64",
}

APP_LXC = """\
# Written by the psa-infra lab from PVE config of CT 150; do not edit.
lxc.uts.name = psa-app
lxc.rootfs.path = overlay:/cache/base:/var/lib/lxc/psa-lab-150/delta
lxc.include = /usr/share/lxc/config/common.conf
lxc.arch = amd64
lxc.apparmor.profile = unconfined
lxc.signal.halt = SIGRTMIN+3
lxc.log.file = /var/lib/lxc/psa-lab-150/lxc.log
lxc.log.level = WARN
lxc.net.0.type = veth
lxc.net.0.link = vmbr20
lxc.net.0.flags = up
lxc.net.0.name = eth0
lxc.net.0.veth.pair = psalab150i0
lxc.net.0.hwaddr = bc:24:11:67:51:df
lxc.net.0.ipv4.address = 10.0.20.50/24
lxc.net.0.ipv4.gateway = 10.0.20.1
lxc.cgroup.memory.limit_in_bytes = 16384M
lxc.cgroup.memory.memsw.limit_in_bytes = 16896M
lxc.cgroup.cpuset.cpus = 0-1
lxc.mount.entry = proc dev/.lxc/proc proc create=dir,optional 0 0
lxc.mount.entry = sys dev/.lxc/sys sysfs create=dir,optional 0 0
"""


@pytest.fixture
def cgroup_v1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A host with cgroup v1 memory (with swap accounting), 2 CPUs and vmbr20."""
    memory = tmp_path / "memory"
    memory.mkdir()
    (memory / "memory.memsw.limit_in_bytes").touch()
    monkeypatch.setattr(containers, "V1_MEMORY", memory)
    monkeypatch.setattr(containers.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(containers, "link_exists", lambda name: name == "vmbr20")


def test_pve_config_becomes_lxc_config(cgroup_v1: None) -> None:
    assert containers.lxc_config(150, APP_CONFIG, Path("/cache/base")) == APP_LXC


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"cores": 1, "cpulimit": "0.5"},
            ["cpuset.cpus = 0\n", "cfs_quota_us = 50000\n"],
        ),
        ({"features": "nesting=0"}, []),
        ({"net0": "name=eth0,bridge=vmbr20,ip=manual"}, ["lxc.net.0.link = vmbr20\n"]),
    ],
)
def test_lxc_config_variants(
    cgroup_v1: None, change: dict[str, Any], expected: list[str]
) -> None:
    text = containers.lxc_config(150, {**APP_CONFIG, **change}, Path("/b"))
    for line in expected:
        assert line in text
    if change.get("features") == "nesting=0":
        assert "dev/.lxc/proc" not in text
    if "net0" in change:
        assert "ipv4" not in text


@pytest.mark.parametrize(
    ("net0", "message"),
    [
        ("name=eth0,bridge=vmbr99,ip=10.0.20.9/24", "bridge 'vmbr99' does not exist"),
        ("name=eth0,bridge=vmbr20,ip=dhcp", "ip=dhcp; the lab's bridges have no DHCP"),
        ("name=eth0,ip=10.0.20.9/24", "net0 has no bridge"),
    ],
)
def test_lxc_config_refuses_what_the_lab_cannot_wire(
    cgroup_v1: None, net0: str, message: str
) -> None:
    with pytest.raises(LabError, match=message.replace("(", r"\(")):
        containers.lxc_config(150, {**APP_CONFIG, "net0": net0}, Path("/b"))


def test_firewall_masquerades_only_outside_the_lab(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(host, "host_nameservers", lambda: ["10.255.255.53"])
    inside, hooks = host.firewall_plan(["10.0.20.0/24", "10.0.30.0/24"])
    nat = [" ".join(r[2:]) for r in inside if r[1] == host.NAT_CHAIN]
    assert nat == [
        "-d 10.0.20.0/24 -j RETURN",
        "-d 10.0.30.0/24 -j RETURN",
        "-j MASQUERADE",
    ]
    forward = [" ".join(r[2:]) for r in inside if r[1] == host.FORWARD_CHAIN]
    assert forward.index(
        "-d 10.255.255.53 -p udp --dport 53 -j ACCEPT"
    ) < forward.index("-d 10.0.0.0/8 -j DROP")
    assert forward[-2:] == [
        "-p tcp -m multiport --dports 80,443 -j ACCEPT",
        "-j DROP",
    ]
    # Only the lab's subnets jump into its chains.
    assert {r[0] + "/" + r[1] for r in hooks} == {"nat/POSTROUTING", "filter/FORWARD"}
    assert all("10.0.20.0/24" in r or "10.0.30.0/24" in r for r in hooks)


def test_bridge_hardware_addresses_are_fixed_and_local() -> None:
    first = host.bridge_hwaddr("vmbr20")
    assert first == host.bridge_hwaddr("vmbr20") != host.bridge_hwaddr("vmbr30")
    assert first.startswith("02:")


def test_core_cli_imports_neither_fakepve_nor_the_lab_engine() -> None:
    code = (
        "import sys, psa_infra.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fakepve', 'proxmoxer') or m in ('psa_lab.lab', 'psa_lab.reconciler')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert done.stdout.strip() == "[]"


def test_lab_help_lists_its_commands(cli: Callable[..., Any]) -> None:
    result = cli("lab", "--help")
    assert result.exit_code == 0
    for command in ("up", "status", "env", "down"):
        assert f"  {command}" in result.stdout


def test_env_without_a_lab_says_how_to_start_one(
    cli: Callable[..., Any], tmp_path: Path
) -> None:
    result = cli("--root", str(ROOT), "lab", "env", "--state-dir", str(tmp_path))
    assert result.exit_code == 9
    assert result.stdout == ""
    assert "psa-infra: error: the lab is not up\nhint: run: psa-infra lab up" in (
        result.stderr
    )


def test_status_without_a_lab(cli: Callable[..., Any], tmp_path: Path) -> None:
    result = cli("--root", str(ROOT), "lab", "status", "--state-dir", str(tmp_path))
    assert (result.exit_code, result.stdout) == (0, "lab: down\n")


def test_without_fakepve_the_lab_asks_for_its_extra(
    cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "fakepve", None)
    result = cli("--root", str(ROOT), "lab", "status", "--state-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "hint: pip install 'psa-infra[lab]'" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="lab down needs root")
def test_down_without_a_lab_is_harmless(
    cli: Callable[..., Any], tmp_path: Path
) -> None:
    result = cli("--root", str(ROOT), "lab", "down", "--state-dir", str(tmp_path))
    assert (result.exit_code, result.stdout) == (0, "lab: nothing to remove\n")
