"""The local lab end to end: real containers behind the fake Proxmox API.

Brings the lab up (building the Debian 12 template on a fresh machine, about
a minute), creates two MVP containers through the API with the parameters
psa-infra renders, reaches them over SSH at their inventory addresses with
the injected key and a checked host key, then destroys them, takes the lab
down and checks that nothing of it is left. Needs root on Debian 12 and the
Debian package registry; run with ``pytest -m lab``. Only one lab can run on
a machine at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_support import lab_leftovers, psa_infra

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".state" / "lab"
NODE = "pve"
TASK_TIMEOUT = 120

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0,
        reason="the lab needs root on Linux (Debian 12)",
    ),
]


@pytest.fixture(scope="module")
def ip_forward_before() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


@pytest.fixture(scope="module")
def lab(ip_forward_before: str) -> Iterator[dict[str, str]]:
    """The lab, up for the MVP inventory; its ``lab env`` settings."""
    assert not lab_leftovers(), (
        "a lab is already on this machine; run psa-infra lab down"
    )
    began = time.monotonic()
    try:
        up = psa_infra("lab", "up", "inventory/mvp.yml")
        print(f"lab up in {time.monotonic() - began:.1f} s\n{up.stdout}{up.stderr}")
        assert "cannot: Elasticsearch" in up.stderr
        exported = psa_infra("lab", "env").stdout
        assert 'PROXMOX_TOKEN_SECRET="$(cat ' in exported, "secrets stay in files"
        shell = subprocess.run(
            ["bash", "-c", exported + "\nenv"],
            capture_output=True,
            text=True,
            check=True,
        )
        settings = dict(
            line.partition("=")[::2]
            for line in shell.stdout.splitlines()
            if "=" in line
        )
        yield settings
    finally:
        psa_infra("lab", "down", check=False)


@pytest.fixture(scope="module")
def api(lab: dict[str, str]) -> Any:
    """A proxmoxer client that verifies the lab with its CA."""
    from proxmoxer import ProxmoxAPI

    host, port = lab["PROXMOX_URL"].removeprefix("https://").split(":")
    user, token_name = lab["PROXMOX_TOKEN_ID"].split("!")
    return ProxmoxAPI(
        host,
        port=int(port),
        user=user,
        token_name=token_name,
        token_value=lab["PROXMOX_TOKEN_SECRET"],
        verify_ssl=lab["PROXMOX_CA_FILE"],
    )


def wait_task(api: Any, upid: str) -> str:
    """The exit status of a task, once it has stopped."""
    deadline = time.monotonic() + TASK_TIMEOUT
    while time.monotonic() < deadline:
        status = api.nodes(NODE).tasks(upid).status.get()
        if status["status"] == "stopped":
            return str(status["exitstatus"])
        time.sleep(0.1)
    pytest.fail(f"task {upid} did not end in {TASK_TIMEOUT} s")


def real_state(vmid: int) -> str:
    done = subprocess.run(
        ["lxc-info", "-n", f"psa-lab-{vmid}", "-sH"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "missing"


def connect(address: str, key_file: Path, known_hosts: Path) -> Any:
    """An SSH client to root@address that accepts only the lab's recorded host key."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    deadline = time.monotonic() + 30
    while True:
        try:
            client.connect(
                address,
                username="root",
                pkey=key,
                timeout=5,
                allow_agent=False,
                look_for_keys=False,
            )
            return client
        except (OSError, paramiko.SSHException) as exc:
            if (
                isinstance(exc, paramiko.BadHostKeyException)
                or time.monotonic() > deadline
            ):
                raise
            time.sleep(0.3)


def sh(client: Any, command: str) -> str:
    _, out, err = client.exec_command(command, timeout=60)
    code = out.channel.recv_exit_status()
    text = out.read().decode()
    assert code == 0, f"{command!r} exited {code}: {err.read().decode()}"
    return str(text.strip())


def test_api_containers_are_real_hosts(
    lab: dict[str, str], api: Any, tmp_path: Path
) -> None:
    from psa_infra.inventory import load_inventory
    from psa_infra.project import find_project
    from psa_infra.render import Renderer
    from psa_infra.secrets import masked_secrets

    # The bridges the lab made are what the node lists, as on a real host.
    bridges = {n["iface"] for n in api.nodes(NODE).network.get(type="bridge")}
    assert bridges == {"vmbr20", "vmbr30"}

    key_file = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True
    )
    public_key = key_file.with_suffix(".pub").read_text().strip()
    project = find_project(ROOT)
    loaded = load_inventory(project.inventory_path(None), None, project.root)
    renderer = Renderer(project.templates, loaded, masked_secrets(loaded), public_key)
    app = loaded.inventory.find("psa-app")
    db = loaded.inventory.find("psa-db-master")

    for container in (app, db):
        params = renderer.create_params(container)
        assert params["ssh-public-keys"] == public_key
        assert wait_task(api, api.nodes(NODE).lxc.post(**params)) == "OK"
        assert real_state(container.vmid) == "STOPPED"
        upid = api.nodes(NODE).lxc(container.vmid).status.start.post()
        assert wait_task(api, upid) == "OK"
        # Reported running only once the real container runs.
        current = api.nodes(NODE).lxc(container.vmid).status.current.get()
        assert current["status"] == "running"
        assert real_state(container.vmid) == "RUNNING"

    known_hosts = STATE / "known_hosts"
    host_keys = {}
    for container in (app, db):
        # The key the lab recorded is the one inside the container.
        inside = subprocess.run(
            ["lxc-attach", "-n", f"psa-lab-{container.vmid}", "--",
             "cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
            capture_output=True, text=True, check=True,
        ).stdout.split()[:2]  # fmt: skip
        assert f"{container.address} {' '.join(inside)}" in known_hosts.read_text()
        host_keys[container.hostname] = inside[1]
    assert host_keys["psa-app"] != host_keys["psa-db-master"], (
        "template host keys shared"
    )

    client = connect(str(app.address), key_file, known_hosts)
    db_client = connect(str(db.address), key_file, known_hosts)
    try:
        assert sh(client, "hostname") == "psa-app"
        assert "inet 10.0.20.50/24" in sh(client, "ip -4 -o addr show dev eth0")
        assert sh(client, "ip route show default").startswith("default via 10.0.20.1")
        limit = sh(client, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
        assert int(limit) == app.memory * 1024 * 1024
        assert sh(client, "systemctl is-system-running --wait") == "running"
        assert sh(client, "systemctl is-active ssh") == "active"
        assert sh(db_client, "hostname") == "psa-db-master"

        # Across the lab's subnets without NAT: the database sees the app's address.
        listen = (
            'python3 -c \'import socket; s = socket.create_server(("", 5432)); '
            "s.settimeout(20); print(s.accept()[1][0])'"
        )
        _, peer, _ = db_client.exec_command(listen, timeout=30)
        time.sleep(0.5)
        connect_db = "import socket; socket.create_connection(('10.0.30.10', 5432), 5)"
        sh(client, f'python3 -c "{connect_db}"')
        assert peer.read().decode().strip() == str(app.address)

        # The package registry is reachable through NAT.
        sh(client, "apt-get update -q")

        # A running container takes a new memory size at once, as on PVE.
        for mib in (2048, 20480):
            api.nodes(NODE).lxc(app.vmid).config.put(memory=mib)
            limit = sh(client, "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
            assert int(limit) == mib * 1024 * 1024
    finally:
        client.close()
        db_client.close()

    # A clean shutdown reaches the container's systemd; then destroy removes it.
    upid = api.nodes(NODE).lxc(app.vmid).status.shutdown.post(timeout=30)
    assert wait_task(api, upid) == "OK"
    assert real_state(app.vmid) == "STOPPED"
    for container in (app, db):
        upid = api.nodes(NODE).lxc(container.vmid).delete(force=1)
        assert wait_task(api, upid) == "OK"
        assert real_state(container.vmid) == "missing"
        assert not Path(f"/var/lib/lxc/psa-lab-{container.vmid}").exists()
    assert api.nodes(NODE).lxc.get() == []
    assert str(db.address) not in known_hosts.read_text()


def test_down_leaves_nothing_behind(
    lab: dict[str, str], ip_forward_before: str
) -> None:
    assert (
        "PSA_LAB_NAT"
        in subprocess.run(
            ["iptables", "-t", "nat", "-S"], capture_output=True, text=True
        ).stdout
    )

    down = psa_infra("lab", "down")
    assert "removed bridge vmbr20" in down.stdout

    assert lab_leftovers() == []
    assert (
        Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == ip_forward_before
    )
    assert not (STATE / "token").exists()
    assert not (STATE / "pki").exists()
    assert (STATE / "cache" / "debian-12-standard_12.0-1_amd64.tar.zst").is_file()
    again = psa_infra("lab", "down")
    assert again.stdout.strip() == "lab: nothing to remove"
    assert psa_infra("lab", "status").stdout.strip() == "lab: down"


def test_crashed_lab_is_recovered_by_down_then_up(ip_forward_before: str) -> None:
    assert not lab_leftovers()
    try:
        psa_infra("lab", "up")
        pid = int((STATE / "server.pid").read_text())
        os.kill(pid, 9)
        time.sleep(0.5)

        status = psa_infra("lab", "status", check=False)
        assert status.returncode == 1
        assert "BROKEN" in status.stdout
        again = psa_infra("lab", "up", check=False)
        assert again.returncode == 9
        assert "did not stop cleanly" in again.stderr
        assert "hint: run psa-infra lab down, then psa-infra lab up" in again.stderr
    finally:
        psa_infra("lab", "down")
    assert lab_leftovers() == []
    assert (
        Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == ip_forward_before
    )


def test_a_bridge_the_lab_did_not_make_is_left_alone() -> None:
    assert not lab_leftovers()
    subprocess.run(["ip", "link", "add", "vmbr30", "type", "bridge"], check=True)
    try:
        refused = psa_infra("lab", "up", check=False)
        assert refused.returncode == 9
        assert "vmbr30 already exists and was not made by the lab" in refused.stderr
        assert Path("/sys/class/net/vmbr30").exists()
        assert not Path("/sys/class/net/vmbr20").exists()
        assert psa_infra("lab", "down").stdout.strip() == "lab: nothing to remove"
        assert Path("/sys/class/net/vmbr30").exists()
    finally:
        subprocess.run(["ip", "link", "del", "vmbr30"], check=False)
