"""Wall times of the local lab: create + start + SSH-ready through the API.

A script, not a test: it prints its figures and whether each meets its aim.
Needs root on Debian 12 and no lab running; it brings the lab up (building
the template first if it is not cached, which is not timed), runs, and
takes the lab down again.

    .venv/bin/python benchmarks/bench_lab.py [--runs N]

1. one container (psa-app): create, start, and an SSH command that succeeds
   with the injected key and the lab's recorded host key; aim < 10 s;
2. the five MVP containers at once, each in its own thread; aim < 20 s.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".state" / "lab"
NODE = "pve"
AIM_ONE, AIM_FIVE = 10.0, 20.0


def psa_infra(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "--root", str(ROOT), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"psa-infra {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def client(settings: dict[str, str]) -> Any:
    from proxmoxer import ProxmoxAPI

    host, port = settings["PROXMOX_URL"].removeprefix("https://").split(":")
    user, token = settings["PROXMOX_TOKEN_ID"].split("!")
    return ProxmoxAPI(
        host,
        port=int(port),
        user=user,
        token_name=token,
        token_value=settings["PROXMOX_TOKEN_SECRET"],
        verify_ssl=settings["PROXMOX_CA_FILE"],
    )


def wait(api: Any, upid: str) -> None:
    while True:
        status = api.nodes(NODE).tasks(upid).status.get()
        if status["status"] == "stopped":
            if status["exitstatus"] != "OK":
                raise RuntimeError(f"{upid}: {status['exitstatus']}")
            return
        time.sleep(0.05)


def ssh_ready(address: str, key_file: Path) -> None:
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    deadline = time.monotonic() + 60
    while True:
        ssh = paramiko.SSHClient()
        ssh.load_host_keys(str(STATE / "known_hosts"))
        ssh.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            ssh.connect(address, username="root", pkey=key, timeout=3,
                        allow_agent=False, look_for_keys=False)  # fmt: skip
            _, out, _ = ssh.exec_command("true")
            if out.channel.recv_exit_status() == 0:
                return
        except (OSError, paramiko.SSHException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        finally:
            ssh.close()


def bring_up(api: Any, params: dict[str, Any], address: str, key_file: Path) -> float:
    """Create, start and reach one container; return the seconds it took."""
    began = time.perf_counter()
    wait(api, api.nodes(NODE).lxc.post(**params))
    wait(api, api.nodes(NODE).lxc(params["vmid"]).status.start.post())
    ssh_ready(address, key_file)
    return time.perf_counter() - began


def destroy(api: Any, vmid: int) -> None:
    wait(api, api.nodes(NODE).lxc(vmid).delete(force=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs

    from psa_infra.inventory import load_inventory
    from psa_infra.project import find_project
    from psa_infra.render import Renderer
    from psa_infra.secrets import masked_secrets

    psa_infra("lab", "up", "inventory/mvp.yml")
    try:
        settings = {}
        for line in psa_infra("lab", "env").splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            settings[key] = shlex.split(value)[0]
        api = client(settings)
        key_file = STATE / "ssh" / "id_ed25519"
        public_key = key_file.with_suffix(".pub").read_text().strip()
        project = find_project(ROOT)
        loaded = load_inventory(project.inventory_path(None), None, project.root)
        renderer = Renderer(
            project.templates, loaded, masked_secrets(loaded), public_key
        )
        containers = loaded.inventory.containers
        params = {c.vmid: renderer.create_params(c) for c in containers}

        app = loaded.inventory.find("psa-app")
        one = []
        for _ in range(runs):
            one.append(bring_up(api, params[app.vmid], str(app.address), key_file))
            destroy(api, app.vmid)

        five = []
        for _ in range(runs):
            began = time.perf_counter()
            with ThreadPoolExecutor(len(containers)) as pool:
                each = list(
                    pool.map(
                        lambda c: bring_up(
                            api, params[c.vmid], str(c.address), key_file
                        ),
                        containers,
                    )
                )
            five.append(time.perf_counter() - began)
            print(f"  five: slowest container {max(each):.1f} s", file=sys.stderr)
            with ThreadPoolExecutor(len(containers)) as pool:
                list(pool.map(lambda c: destroy(api, c.vmid), containers))
    finally:
        psa_infra("lab", "down")

    for label, times, aim in (
        ("one container (psa-app)", one, AIM_ONE),
        (f"{len(containers)} MVP containers in parallel", five, AIM_FIVE),
    ):
        median = statistics.median(times)
        verdict = "meets" if median < aim else "MISSES"
        shown = ", ".join(f"{t:.1f}" for t in times)
        print(
            f"{label}: create + start + SSH-ready median {median:.1f} s "
            f"(runs: {shown}); aim < {aim:.0f} s: {verdict}"
        )


if __name__ == "__main__":
    main()
