"""Bring the lab up, report on it, and take it down.

``up`` follows fixed stages: check root, install what is missing, build or
reuse the template, make bridges, NAT and forwarding, make the secrets,
start the API server. Each host change is recorded before it is made, so
``down`` removes exactly what ``up`` made, by name, and can run any number
of times.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from psa_infra.inventory import LoadedInventory

from . import host
from .containers import remove as remove_container
from .errors import LabError
from .host import say
from .state import CONTAINER_PREFIX, TOKEN_ID, LabState, Record, write_private

HOST = "127.0.86.1"
PORT = 8006
SERVER_START_TIMEOUT = 30

# What the lab cannot give; shown by up and status, and in docs/lab.md.
CANNOT = (
    "Elasticsearch: no package source is reachable from here "
    "(not Debian, PyPI or npm); lab env sets packages.elasticsearch=none, so "
    "provision configures it without installing it and verify reports its "
    "service as unavailable",
    "containers run privileged: unprivileged=1 is recorded but not mapped to a user "
    "namespace",
    "DNS: containers use the host's name servers, not the inventory's nameserver "
    "(nothing answers DNS on the lab's bridges)",
    "containers reach only the lab's hosts, the host's name servers and web ports "
    "(80, 443) of public addresses",
    "disk sizes, storages, snapshots, clones, backups and HA are API-only (nothing "
    "real follows them); suspend and resume are refused",
    "migration between nodes moves a container in the API only: the lab is one "
    "machine (a restart migration does restart the real container)",
    "new host keys at every create: lab env points psa-infra at the lab's own "
    "known_hosts (PSA_INFRA_KNOWN_HOSTS), which lab down removes; with another "
    "known_hosts file, remove old keys after lab down/up (ssh-keygen -f FILE -R "
    "ADDRESS)",
)


@dataclass
class Status:
    """What ``lab status`` reports."""

    up: bool
    url: str
    server_pid: int | None
    bridges: list[str]
    containers: dict[str, str]
    state_dir: Path


def up(state: LabState, loaded: LoadedInventory) -> Record:
    """Bring the lab up for one inventory; return what it made."""
    host.require_root()
    if state.exists():
        record = state.load()
        if record.started and state.server_pid() is not None:
            raise LabError(
                f"the lab is already up at https://{record.host}:{record.port}",
                hint='use it: eval "$(psa-infra lab env)"; or psa-infra lab down',
            )
        raise LabError(
            "a lab was started here and did not stop cleanly (its API server is gone)",
            hint="run psa-infra lab down, then psa-infra lab up",
        )
    inventory = loaded.inventory
    record = Record(
        inventory=str(loaded.path),
        host=HOST,
        port=PORT,
        nodes=sorted(
            {inventory.proxmox.node, *inventory.proxmox.nodes}
            | {c.node for c in inventory.containers if c.node}
        ),
        storages={
            inventory.proxmox.template_storage: "iso,vztmpl,backup",
            inventory.proxmox.storage: "images,rootdir",
        },
        template_volume=inventory.proxmox.template_volume,
    )
    host.check_bridges_free(sorted(inventory.networks), record)
    host.install_missing()

    from .template import ensure_base, ensure_template

    ensure_template(state.template)
    ensure_base(state.template, state.base)
    if inventory.proxmox.template != state.template.name:
        say(
            f"warning: the inventory names template {inventory.proxmox.template}; "
            "the lab has only its Debian 12 template, so creates will fail"
        )

    state.save(record)
    subnets = []
    for name, network in sorted(inventory.networks.items()):
        address = f"{network.gateway}/{network.subnet.prefixlen}"
        hwaddr = host.bridge_hwaddr(name)
        record.bridges[name] = {"address": address, "hwaddr": hwaddr}
        state.save(record)
        host.add_bridge(name, str(network.gateway), network.subnet.prefixlen, hwaddr)
        subnets.append(str(network.subnet))
    say(f"bridges {', '.join(sorted(record.bridges))} up")

    record.ip_forward_before = host.read_ip_forward()
    inside, hooks = host.firewall_plan(subnets)
    record.chains = [["nat", host.NAT_CHAIN], ["filter", host.FORWARD_CHAIN]]
    record.rules = hooks
    state.save(record)
    for table, chain in record.chains:
        host.add_chain(table, chain, inside)
    for rule in hooks:
        host.add_hook(rule)
    host.write_ip_forward("1")
    say(f"NAT for {', '.join(subnets)} (web ports and DNS only)")

    if int(host.read_max_map_count()) < host.ELASTICSEARCH_MAP_COUNT:
        record.max_map_count_before = host.read_max_map_count()
        state.save(record)
        host.write_max_map_count(str(host.ELASTICSEARCH_MAP_COUNT))
        say(f"vm.max_map_count {host.ELASTICSEARCH_MAP_COUNT} for Elasticsearch")

    _make_secrets(state)
    _make_app_secrets(state, loaded)
    _start_server(state)
    record.started = True
    state.save(record)
    return record


def _make_secrets(state: LabState) -> None:
    from .pki import make_pki

    make_pki(state.pki, HOST)
    write_private(
        state.token_file, str(uuid.UUID(bytes=secrets.token_bytes(16), version=4))
    )
    key = state.ssh_key
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.parent.chmod(0o700)
        host.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "psa-infra-lab",
                  "-f", str(key)])  # fmt: skip
        key.chmod(0o600)
    state.containers_dir.mkdir(parents=True, exist_ok=True)
    state.known_hosts.touch()


def _make_app_secrets(state: LabState, loaded: LoadedInventory) -> None:
    """Generate a value for each secret the inventory reads from the environment."""
    state.secrets_dir.mkdir(parents=True, exist_ok=True)
    state.secrets_dir.chmod(0o700)
    for ref in loaded.inventory.secrets.values():
        if ref.env is not None and not (state.secrets_dir / ref.env).exists():
            write_private(state.secrets_dir / ref.env, secrets.token_urlsafe(24))


def _start_server(state: LabState) -> None:
    """Start the API server detached, and wait until it answers."""
    root = state.root.resolve()
    log = open(state.logfile, "ab")  # noqa: SIM115 - handed to the child
    env = dict(os.environ, PYTHONPATH=_import_path())
    subprocess.Popen(
        [sys.executable, "-m", "psa_lab.server", "--state", str(root)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd="/",
        env=env,
    )
    log.close()
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if state.server_pid() is not None and _answers(state):
            say(f"API server up at https://{HOST}:{PORT} (log: {state.logfile})")
            return
        time.sleep(0.2)
    tail = state.logfile.read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
    raise LabError(
        "the lab's API server did not start: " + " | ".join(tail),
        hint="see the log, then run psa-infra lab down",
    )


def _import_path() -> str:
    """PYTHONPATH for the server: wherever psa_lab and its dependencies come from."""
    here = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


def _answers(state: LabState) -> bool:
    context = ssl.create_default_context(cafile=str(state.ca_file))
    request = urllib.request.Request(
        f"https://{HOST}:{PORT}/api2/json/version",
        headers={"Authorization": f"PVEAPIToken={TOKEN_ID}={state.token()}"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def down(state: LabState) -> list[str]:
    """Remove everything the lab made; return what was removed. Safe to repeat."""
    host.require_root()
    removed: list[str] = []
    record = state.load()

    pid = state.server_pid()
    if pid is not None:
        _stop_server(pid)
        removed.append(f"API server (pid {pid})")
    state.pidfile.unlink(missing_ok=True)

    for name in state.containers():
        if name.startswith(CONTAINER_PREFIX) and remove_container(name):
            removed.append(f"container {name}")
        state.drop_container(name)

    for rule in record.rules:
        host.remove_hook(rule)
    for table, chain in record.chains:
        if host.chain_exists(table, chain):
            host.remove_chain(table, chain)
            removed.append(f"iptables chain {table}/{chain}")
    record.rules, record.chains = [], []
    if record.bridges or record.ip_forward_before is not None:
        state.save(record)

    for name in sorted(record.bridges):
        if host.link_exists(name):
            host.remove_bridge(name)
            removed.append(f"bridge {name}")
    if record.ip_forward_before is not None:
        host.write_ip_forward(record.ip_forward_before)
        removed.append(f"ip_forward restored to {record.ip_forward_before}")
    if record.max_map_count_before is not None:
        host.write_max_map_count(record.max_map_count_before)
        removed.append(f"vm.max_map_count restored to {record.max_map_count_before}")

    for path in (state.token_file, state.known_hosts, state.logfile, state.record_file):
        path.unlink(missing_ok=True)
    for folder in (
        state.pki,
        state.ssh_key.parent,
        state.containers_dir,
        state.secrets_dir,
    ):
        _remove_tree(folder)
    return removed


def _stop_server(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _remove_tree(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def status(state: LabState) -> Status:
    """Report the lab's server, bridges and containers."""
    record = state.load()
    pid = state.server_pid()
    containers = {}
    for name in state.containers():
        done = host.run(["lxc-info", "-n", name, "-sH"], check=False)
        containers[name] = (
            done.stdout.strip().lower() if done.returncode == 0 else "missing"
        )
    return Status(
        up=state.exists() and record.started and pid is not None,
        url=f"https://{record.host}:{record.port}" if record.host else "",
        server_pid=pid,
        bridges=sorted(b for b in record.bridges if host.link_exists(b)),
        containers=containers,
        state_dir=state.root,
    )


LAB_SSH_USER = "root"
LAB_PACKAGE_SOURCES = (
    "packages.nodejs=debian",
    "packages.rabbitmq=debian",
    "packages.elasticsearch=none",
)


def env_lines(state: LabState) -> list[str]:
    """The ``export`` lines that point psa-infra at the lab."""
    record = state.load()
    if not (state.exists() and record.started):
        raise LabError("the lab is not up", hint="run: psa-infra lab up")
    state.token()  # fails clearly when the lab has no token
    key = state.ssh_key.resolve()
    values = {
        "PROXMOX_URL": f"https://{record.host}:{record.port}",
        "PROXMOX_TOKEN_ID": TOKEN_ID,
        "PROXMOX_CA_FILE": str(state.ca_file.resolve()),
        "PSA_INFRA_KNOWN_HOSTS": str(state.known_hosts.resolve()),
        # The lab's SSH key, and the package sources reachable from the lab.
        "PSA_INFRA_SET": ";".join(
            [
                f"ssh.private_key={key}",
                f"ssh.public_key={key}.pub",
                f"ssh.user={LAB_SSH_USER}",
                *LAB_PACKAGE_SOURCES,
            ]
        ),
    }
    lines = [f"export {name}={shlex.quote(value)}" for name, value in values.items()]
    # Secret values stay in their 0600 files; the lines only read them.
    secret_files = {"PROXMOX_TOKEN_SECRET": state.token_file}
    if state.secrets_dir.is_dir():
        secret_files |= {p.name: p for p in sorted(state.secrets_dir.iterdir())}
    lines += [
        f'export {name}="$(cat {shlex.quote(str(path.resolve()))})"'
        for name, path in secret_files.items()
    ]
    return lines
