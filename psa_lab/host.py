"""The lab's changes to the host: packages, bridges, NAT and forwarding.

Each change is recorded in the lab state before it is made (see
:mod:`psa_lab.state`), and removed by name on ``lab down``. Containers may
reach the lab's own hosts, the host's name servers, and web ports (80, 443)
of public addresses, which is where the package registries are; everything
else they send through the host is dropped.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import LabError
from .state import Record

log = logging.getLogger(__name__)

NAT_CHAIN = "PSA_LAB_NAT"
FORWARD_CHAIN = "PSA_LAB_FWD"
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
RESOLV_CONF = Path("/etc/resolv.conf")
# Addresses no package registry lives at; containers may not send to them.
PRIVATE = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
)
# Command -> the Debian package that brings it.
NEEDED = {
    "lxc-start": "lxc",
    "debootstrap": "debootstrap",
    "iptables": "iptables",
    "zstd": "zstd",
    "ssh-keygen": "openssh-client",
}


def say(message: str) -> None:
    """Show progress on stderr."""
    print(f"psa-infra lab: {message}", file=sys.stderr, flush=True)


def run(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a host command; a failure raises LabError with its last output lines."""
    log.debug("run: %s", " ".join(args))
    try:
        done = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise LabError(
            f"{args[0]} is not installed", hint="run: psa-infra lab up (it installs it)"
        ) from None
    except subprocess.TimeoutExpired:
        raise LabError(f"'{' '.join(args)}' did not finish in {timeout} s") from None
    if check and done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise LabError(
            f"'{' '.join(args)}' failed with exit code {done.returncode}: {tail}"
        )
    return done


def require_root() -> None:
    """The lab makes bridges, firewall rules and containers: it needs root."""
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (it creates bridges, NAT rules and LXC containers)",
            hint="run it as root, e.g. sudo -E psa-infra lab up",
        )


def install_missing() -> None:
    """Install lxc, debootstrap, iptables and friends from the Debian registry."""
    missing = sorted({pkg for cmd, pkg in NEEDED.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise LabError(
            f"missing {', '.join(missing)} and no apt-get to install them",
            hint="the lab runs on Debian 12; install those packages by hand",
        )
    say(f"installing {' '.join(missing)} from the Debian package registry")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-q"], env=env, timeout=600)
    run(["apt-get", "install", "-y", "-q", *missing], env=env, timeout=1200)


# ------------------------------------------------------------------ bridges


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def bridge_hwaddr(name: str) -> str:
    """A fixed, locally administered hardware address for a bridge.

    A bridge without one takes the lowest address of its ports, so stopping a
    container can change it under the others and stall their traffic.
    """
    digest = hashlib.sha256(f"psa-lab:{name}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def check_bridges_free(wanted: Sequence[str], record: Record) -> None:
    """Refuse existing bridges the lab did not make (a real PVE host has vmbr*)."""
    foreign = [b for b in wanted if link_exists(b) and b not in record.bridges]
    if foreign:
        raise LabError(
            f"network interface {', '.join(foreign)} already exists and was not made "
            "by the lab; the lab will not touch it",
            hint="run the lab on a machine without these bridges (not on a Proxmox "
            "host), or remove them if they are left over from something else",
        )


def add_bridge(name: str, gateway: str, prefixlen: int, hwaddr: str) -> None:
    """Create a bridge with the gateway address on the host."""
    if not link_exists(name):
        run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "link", "set", name, "address", hwaddr])
    have = run(["ip", "-o", "-4", "addr", "show", "dev", name]).stdout
    if f" {gateway}/{prefixlen} " not in have:
        run(["ip", "addr", "add", f"{gateway}/{prefixlen}", "dev", name])
    run(["ip", "link", "set", name, "up"])


def remove_bridge(name: str) -> None:
    if link_exists(name):
        run(["ip", "link", "del", name])


# --------------------------------------------------------------------- NAT


def host_nameservers() -> list[str]:
    """IPv4 name servers of the host's resolv.conf."""
    found = []
    for line in RESOLV_CONF.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                if ipaddress.ip_address(words[1]).version == 4:
                    found.append(words[1])
            except ValueError:
                continue
    return found


def firewall_plan(subnets: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """The lab's chains' content and its jumps from the host's chains.

    Returns (rules inside the lab's own chains, rules in the host's chains),
    each as [table, chain, rule words...].
    """
    inside: list[list[str]] = []
    for subnet in subnets:
        inside.append(["nat", NAT_CHAIN, "-d", subnet, "-j", "RETURN"])
    inside.append(["nat", NAT_CHAIN, "-j", "MASQUERADE"])
    fwd = ["filter", FORWARD_CHAIN]
    inside.append(
        [*fwd, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    )
    for subnet in subnets:
        inside.append([*fwd, "-d", subnet, "-j", "ACCEPT"])
    for server in host_nameservers():
        for proto in ("udp", "tcp"):
            inside.append(
                [*fwd, "-d", server, "-p", proto, "--dport", "53", "-j", "ACCEPT"]
            )
    for network in PRIVATE:
        inside.append([*fwd, "-d", network, "-j", "DROP"])
    inside.append(
        [*fwd, "-p", "tcp", "-m", "multiport", "--dports", "80,443", "-j", "ACCEPT"]
    )
    inside.append([*fwd, "-j", "DROP"])

    hooks: list[list[str]] = []
    for subnet in subnets:
        hooks.append(["nat", "POSTROUTING", "-s", subnet, "-j", NAT_CHAIN])
        hooks.append(["filter", "FORWARD", "-s", subnet, "-j", FORWARD_CHAIN])
        hooks.append(
            ["filter", "FORWARD", "-d", subnet, "-m", "conntrack", "--ctstate",
             "ESTABLISHED,RELATED", "-j", "ACCEPT"]
        )  # fmt: skip
    return inside, hooks


def chain_exists(table: str, chain: str) -> bool:
    return run(["iptables", "-t", table, "-nL", chain], check=False).returncode == 0


def add_chain(table: str, chain: str, rules: Sequence[Sequence[str]]) -> None:
    """Create (or refill) one of the lab's own chains."""
    if chain_exists(table, chain):
        run(["iptables", "-t", table, "-F", chain])
    else:
        run(["iptables", "-t", table, "-N", chain])
    for rule in rules:
        if rule[0] == table and rule[1] == chain:
            run(["iptables", "-t", table, "-A", chain, *rule[2:]])


def add_hook(rule: Sequence[str]) -> None:
    """Insert a jump at the top of a host chain, once."""
    table, chain, *spec = rule
    if run(["iptables", "-t", table, "-C", chain, *spec], check=False).returncode != 0:
        run(["iptables", "-t", table, "-I", chain, "1", *spec])


def remove_hook(rule: Sequence[str]) -> None:
    table, chain, *spec = rule
    while (
        run(["iptables", "-t", table, "-C", chain, *spec], check=False).returncode == 0
    ):
        run(["iptables", "-t", table, "-D", chain, *spec])


def remove_chain(table: str, chain: str) -> None:
    if chain_exists(table, chain):
        run(["iptables", "-t", table, "-F", chain])
        run(["iptables", "-t", table, "-X", chain])


MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
# Elasticsearch needs at least this many memory map areas; on Proxmox it is a
# node setting containers cannot change, so the lab sets it on its host.
ELASTICSEARCH_MAP_COUNT = 262144


def read_max_map_count() -> str:
    return MAX_MAP_COUNT.read_text(encoding="utf-8").strip()


def write_max_map_count(value: str) -> None:
    MAX_MAP_COUNT.write_text(value + "\n", encoding="utf-8")


def read_ip_forward() -> str:
    return IP_FORWARD.read_text(encoding="utf-8").strip()


def write_ip_forward(value: str) -> None:
    IP_FORWARD.write_text(value + "\n", encoding="utf-8")
