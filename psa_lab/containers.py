"""Real LXC containers that mirror the fake API's containers.

A PVE container config (what ``GET /nodes/{node}/lxc/{vmid}/config`` shows)
is translated into an LXC config: hostname, net0 on its bridge with address,
gateway and hardware address, memory and swap as cgroup limits, cores as a
CPU set, nesting. Each container is named ``psa-lab-<vmid>`` under LXC's
default path, so plain ``lxc-ls``/``lxc-attach -n psa-lab-150`` work, and
the lab never touches containers it did not make.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import LabError
from .host import RESOLV_CONF, link_exists, run
from .state import CONTAINER_PREFIX, LabState

LXC_PATH = Path("/var/lib/lxc")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
START_TIMEOUT = 30
V1_MEMORY = Path("/sys/fs/cgroup/memory")


def name_of(vmid: int) -> str:
    """The LXC name of a lab container."""
    return f"{CONTAINER_PREFIX}{vmid}"


def split_props(text: str) -> dict[str, str]:
    """The key=value pairs of a PVE property string such as net0."""
    pairs = (part.partition("=") for part in str(text).split(","))
    return {key: value for key, eq, value in pairs if eq}


def _cpuset(cores: int) -> str:
    count = max(1, min(cores, os.cpu_count() or 1))
    return "0" if count == 1 else f"0-{count - 1}"


def lxc_config(vmid: int, config: Mapping[str, Any], base: Path) -> str:
    """Translate a PVE container config into an LXC config."""
    name = name_of(vmid)
    lines = [
        f"# Written by the psa-infra lab from PVE config of CT {vmid}; do not edit.",
        f"lxc.uts.name = {config.get('hostname') or f'CT{vmid}'}",
        f"lxc.rootfs.path = overlay:{base}:{LXC_PATH / name / 'delta'}",
        "lxc.include = /usr/share/lxc/config/common.conf",
        f"lxc.arch = {config.get('arch') or 'amd64'}",
        # No AppArmor on the lab hosts: PVE's generated profile has no equivalent.
        "lxc.apparmor.profile = unconfined",
        # systemd powers off on SIGRTMIN+3, not on LXC's default SIGPWR.
        "lxc.signal.halt = SIGRTMIN+3",
        f"lxc.log.file = {LXC_PATH / name / 'lxc.log'}",
        "lxc.log.level = WARN",
    ]
    for index, key in enumerate(
        sorted(k for k in config if re.fullmatch(r"net\d+", k))
    ):
        lines += _net(vmid, index, key, split_props(config[key]))

    lines += [f"lxc.{key} = {value}" for key, value in limits(config)]

    if split_props(str(config.get("features") or "")).get("nesting") == "1":
        # What nesting=1 adds on PVE apart from its AppArmor profile.
        lines.append(
            "lxc.mount.entry = proc dev/.lxc/proc proc create=dir,optional 0 0"
        )
        lines.append("lxc.mount.entry = sys dev/.lxc/sys sysfs create=dir,optional 0 0")
    return "\n".join(lines) + "\n"


def limits(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Memory, swap and CPU limits as (LXC cgroup key, value), in applying order."""
    memory = int(config.get("memory") or 512)
    swap = int(config.get("swap") or 0)
    cores = int(config.get("cores") or os.cpu_count() or 1)
    found = []
    if V1_MEMORY.is_dir():
        found.append(("cgroup.memory.limit_in_bytes", f"{memory}M"))
        if (V1_MEMORY / "memory.memsw.limit_in_bytes").exists():
            found.append(("cgroup.memory.memsw.limit_in_bytes", f"{memory + swap}M"))
        found.append(("cgroup.cpuset.cpus", _cpuset(cores)))
        if config.get("cpulimit"):
            quota = int(float(config["cpulimit"]) * 100000)
            found.append(("cgroup.cpu.cfs_quota_us", str(quota)))
    else:
        found.append(("cgroup2.memory.max", f"{memory}M"))
        found.append(("cgroup2.memory.swap.max", f"{swap}M"))
        found.append(("cgroup2.cpuset.cpus", _cpuset(cores)))
        if config.get("cpulimit"):
            quota = int(float(config["cpulimit"]) * 100000)
            found.append(("cgroup2.cpu.max", f"{quota} 100000"))
    return found


def _net(vmid: int, index: int, key: str, props: Mapping[str, str]) -> list[str]:
    bridge = props.get("bridge", "")
    if not bridge:
        raise LabError(
            f"CT {vmid}: {key} has no bridge; the lab has nothing to connect it to"
        )
    if not link_exists(bridge):
        raise LabError(f"bridge '{bridge}' does not exist")
    prefix = f"lxc.net.{index}"
    lines = [
        f"{prefix}.type = veth",
        f"{prefix}.link = {bridge}",
        f"{prefix}.flags = {'down' if props.get('link_down') == '1' else 'up'}",
        f"{prefix}.name = {props.get('name', f'eth{index}')}",
        f"{prefix}.veth.pair = psalab{vmid}i{key[3:]}",
    ]
    if props.get("hwaddr"):
        lines.append(f"{prefix}.hwaddr = {props['hwaddr'].lower()}")
    if props.get("mtu"):
        lines.append(f"{prefix}.mtu = {props['mtu']}")
    address = props.get("ip", "")
    if address in ("dhcp", "auto"):
        raise LabError(
            f"CT {vmid}: {key} asks for ip={address}; the lab's bridges have no DHCP "
            "server, give a static address"
        )
    if address and address != "manual":
        lines.append(f"{prefix}.ipv4.address = {address}")
        if props.get("gw"):
            lines.append(f"{prefix}.ipv4.gateway = {props['gw']}")
    return lines


def remove(name: str) -> bool:
    """Remove one lab container by name, also one a crash left half made."""
    folder = LXC_PATH / name
    if not folder.exists():
        return False
    mountpoint = str(folder / "rootfs")
    mounts = Path("/proc/mounts").read_text(encoding="utf-8").split("\n")
    if any(line.split(" ")[1:2] == [mountpoint] for line in mounts):
        run(["umount", mountpoint])
    if (folder / "config").exists():
        run(["lxc-destroy", "-n", name, "-f"])
    shutil.rmtree(folder, ignore_errors=True)
    return True


class Containers:
    """The real containers of one lab."""

    def __init__(self, state: LabState) -> None:
        self.state = state
        self._known_hosts_lock = threading.Lock()

    def folder(self, vmid: int) -> Path:
        return LXC_PATH / name_of(vmid)

    def rootfs(self, vmid: int) -> Path:
        """Where the root filesystem is mounted while the lab writes into it."""
        return self.folder(vmid) / "rootfs"

    def exists(self, vmid: int) -> bool:
        return (self.folder(vmid) / "config").exists()

    def running(self, vmid: int) -> bool:
        done = run(["lxc-info", "-n", name_of(vmid), "-sH"], check=False)
        return done.returncode == 0 and done.stdout.strip() == "RUNNING"

    # ----------------------------------------------------------- create

    def create(
        self, vmid: int, config: Mapping[str, Any], ssh_keys: str | None
    ) -> None:
        """Make the root filesystem, fresh host keys, and authorise the SSH keys.

        The root filesystem is the unpacked template with a copy-on-write
        layer of the container's own on top: creating five containers
        writes kilobytes, not five copies of the template.
        """
        name = name_of(vmid)
        folder = self.folder(vmid)
        if folder.exists():
            raise LabError(
                f"{folder} already exists; the lab will not overwrite it",
                hint="run psa-infra lab down, or remove it if it is not the lab's",
            )
        self.state.add_container(name)
        for part in ("delta", "olwork", "rootfs"):
            (folder / part).mkdir(parents=True, mode=0o755)
        with self._mounted(vmid) as rootfs:
            # A template's host keys would be shared by all its containers.
            for old in (rootfs / "etc/ssh").glob("ssh_host_*"):
                old.unlink()
            run(["ssh-keygen", "-A", "-f", str(rootfs)])
            ssh_dir = rootfs / "root/.ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            keys = (ssh_keys or "").strip()
            if keys:
                authorized = ssh_dir / "authorized_keys"
                authorized.write_text(keys + "\n", encoding="utf-8")
                authorized.chmod(0o600)
            self._write_files(rootfs, vmid, config)
        self._write_lxc_config(vmid, config)

    @contextmanager
    def _mounted(self, vmid: int) -> Iterator[Path]:
        """Mount the container's root filesystem on the host while writing into it."""
        folder, mountpoint = self.folder(vmid), self.rootfs(vmid)
        options = (
            f"lowerdir={self.state.base},upperdir={folder / 'delta'},"
            f"workdir={folder / 'olwork'}"
        )
        run(["mount", "-t", "overlay", "overlay", "-o", options, str(mountpoint)])
        try:
            yield mountpoint
        finally:
            run(["umount", str(mountpoint)])

    def write_config(self, vmid: int, config: Mapping[str, Any]) -> None:
        """Write the LXC config and the files PVE manages inside the container."""
        with self._mounted(vmid) as rootfs:
            self._write_files(rootfs, vmid, config)
        self._write_lxc_config(vmid, config)

    def _write_files(self, rootfs: Path, vmid: int, config: Mapping[str, Any]) -> None:
        hostname = str(config.get("hostname") or f"CT{vmid}")
        domain = str(config.get("searchdomain") or "").split()
        address = split_props(str(config.get("net0", ""))).get("ip", "").split("/")[0]
        fqdn = f"{hostname}.{domain[0]}" if domain else hostname
        (rootfs / "etc/hostname").write_text(hostname + "\n", encoding="utf-8")
        hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        if address and address not in ("dhcp", "manual"):
            hosts.append(f"{address} {fqdn} {hostname}")
        else:
            hosts.append(f"127.0.1.1 {fqdn} {hostname}")
        (rootfs / "etc/hosts").write_text("\n".join(hosts) + "\n", encoding="utf-8")

        # The host's name servers: nothing answers DNS on the lab's bridges.
        resolv = [
            line
            for line in RESOLV_CONF.read_text(encoding="utf-8").splitlines()
            if line.startswith("nameserver")
        ]
        if domain:
            resolv.append("search " + " ".join(domain))
        resolv_path = rootfs / "etc/resolv.conf"
        resolv_path.unlink(missing_ok=True)
        resolv_path.write_text("\n".join(resolv) + "\n", encoding="utf-8")

        # The host's CA bundle, so TLS to registries works through its egress proxy.
        if HOST_CA_BUNDLE.is_file():
            local = rootfs / "usr/local/share/ca-certificates"
            local.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(HOST_CA_BUNDLE, local / "psa-lab-host.crt")
            shutil.copyfile(
                HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt"
            )
        self._note_host_keys(vmid, rootfs, address)

    def _write_lxc_config(self, vmid: int, config: Mapping[str, Any]) -> None:
        (self.folder(vmid) / "config").write_text(
            lxc_config(vmid, config, self.state.base), encoding="utf-8"
        )

    # ------------------------------------------------------------ power

    def start(self, vmid: int, config: Mapping[str, Any]) -> int:
        """Start the container with its current config; return its init's pid."""
        name = name_of(vmid)
        self.write_config(vmid, config)
        log_file = LXC_PATH / name / "lxc.log"
        log_file.unlink(missing_ok=True)
        done = run(["lxc-start", "-n", name, "-d"], check=False)
        waited = run(
            ["lxc-wait", "-n", name, "-s", "RUNNING", "-t", str(START_TIMEOUT)],
            check=False,
        )
        if done.returncode != 0 or waited.returncode != 0 or not self.running(vmid):
            why = (
                log_file.read_text(encoding="utf-8", errors="replace")
                if log_file.exists()
                else ""
            )
            tail = " ".join(why.strip().splitlines()[-3:]) or done.stderr.strip()
            raise LabError(f"lxc-start of {name} failed: {tail or 'no log'}")
        return self.pid(vmid)

    def pid(self, vmid: int) -> int:
        """The process id of the container's init, or 0."""
        pid = run(["lxc-info", "-n", name_of(vmid), "-pH"], check=False).stdout.strip()
        return int(pid) if pid.isdigit() else 0

    def set_limits(self, vmid: int, config: Mapping[str, Any]) -> None:
        """Apply memory, swap and CPU limits to a running container, as PVE does."""
        name = name_of(vmid)
        wanted = [(key.split(".", 1)[1], value) for key, value in limits(config)]
        # Memory and memory+swap must stay ordered: a failed step is retried last.
        failed = []
        for key, value in wanted:
            if run(["lxc-cgroup", "-n", name, key, value], check=False).returncode:
                failed.append((key, value))
        for key, value in failed:
            run(["lxc-cgroup", "-n", name, key, value])

    def shutdown(self, vmid: int, timeout: int, force: bool) -> bool:
        """Ask systemd to power off; kill after ``timeout`` s if ``force``."""
        name = name_of(vmid)
        if not self.running(vmid):
            return True
        run(
            ["lxc-stop", "-n", name, "--nokill", "-t", str(max(timeout, 1))],
            check=False,
        )
        if self.running(vmid) and force:
            run(["lxc-stop", "-n", name, "-k"], check=False)
        return not self.running(vmid)

    def stop(self, vmid: int) -> None:
        """Stop at once, as ``pct stop`` does."""
        if self.running(vmid):
            run(["lxc-stop", "-n", name_of(vmid), "-k"])

    def destroy(self, vmid: int) -> None:
        """Remove the container and its root filesystem."""
        remove(name_of(vmid))
        self.state.drop_container(name_of(vmid))
        self._write_known_hosts()

    # ------------------------------------------------------- host keys

    def _note_host_keys(self, vmid: int, rootfs: Path, address: str) -> None:
        """Record the container's SSH host keys at its address in known_hosts."""
        keys = []
        for path in sorted((rootfs / "etc/ssh").glob("ssh_host_*_key.pub")):
            words = path.read_text(encoding="utf-8").split()
            keys.append(f"{address} {words[0]} {words[1]}")
        marker = self.state.containers_dir / name_of(vmid)
        marker.write_text("".join(f"{line}\n" for line in keys if address), "utf-8")
        self._write_known_hosts()

    def _write_known_hosts(self) -> None:
        """Rebuild the lab's known_hosts from every container's host keys."""
        with self._known_hosts_lock:
            lines = []
            for name in self.state.containers():
                try:
                    text = (self.state.containers_dir / name).read_text(
                        encoding="utf-8"
                    )
                except FileNotFoundError:
                    continue
                lines += [ln for ln in text.splitlines() if ln]
            temporary = self.state.known_hosts.with_suffix(".tmp")
            temporary.write_text("".join(f"{ln}\n" for ln in lines), encoding="utf-8")
            temporary.replace(self.state.known_hosts)
