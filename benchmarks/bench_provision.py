"""Wall times of ``psa-infra provision --containers-only --yes`` against fakepve.

A script, not a test: it prints its figures and whether each meets its aim.

    .venv/bin/python benchmarks/bench_provision.py [--skip-80]

Scenarios, each on a fresh fake cluster served in this process (so the
bridges vmbr20/vmbr30 can be added to its network sample); psa-infra runs as
a separate process, timed from start to exit:

1. the five MVP containers, instant tasks: first run (aim < 1.5 s) and
   re-run (aim < 1.0 s, zero write requests);
2. 20 containers whose create takes 2 s (time scale 0.1, create 20 PVE s)
   at --parallel 5: aim within 1.1 x of ceil(20/5) x 2 s = 8 s;
3. 80 containers at the default parallelism N: aim within 1.1 x of
   ceil(80/N) x 2 s.

fakepve is AGPL and used here as a test tool only.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from fakepve import FakePve, settle, shapes
from fakepve.certs import make_cert

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = "debian-12-standard_12.0-1_amd64.tar.zst"
TOKEN_ID, TOKEN_SECRET = "bench@pve!provision", "bench-Secret"
PSA_INFRA = Path(sys.executable).parent / "psa-infra"
DEFAULT_PARALLEL = 4  # psa_infra.provision.DEFAULT_PARALLEL, read without importing


def _networks(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    sample = shapes.networks(ctx)
    extra = [
        {
            k: v
            for k, v in dict(sample[0], iface=name, bridge_ports="").items()
            if k not in ("address", "cidr", "netmask", "gateway")
        }
        for name in ("vmbr20", "vmbr30")
    ]
    return sample + extra


class Served:
    """A FakePve on its own event loop in a thread of this process."""

    def __init__(self, pki: tuple[str, str], time_scale: float) -> None:
        self.pve = FakePve(host="127.0.0.1", port=0)
        self.pve.time_scale = time_scale
        self.pve.nodes = {"pve": {"online": True}}
        self.pve.apitokens[TOKEN_ID] = TOKEN_SECRET
        self.pve.store_file("local", TEMPLATE, 180 * 1024**2, content="vztmpl")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._call(self.pve.start(*pki))

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def writes(self) -> int:
        return sum(
            1
            for method, path, _ in self.pve.requests
            if method != "GET" and not path.endswith("/access/ticket")
        )

    def stop(self) -> None:
        self._call(settle())
        self._call(self.pve.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def project(base: Path, count: int | None) -> Path:
    """A project with the MVP inventory, or a synthetic one of ``count`` containers."""
    root = base / f"project-{count or 'mvp'}"
    (root / "inventory").mkdir(parents=True)
    shutil.copytree(ROOT / "templates" / "lxc", root / "templates" / "lxc")
    key = base / "id_ed25519.pub"
    key.write_text("ssh-ed25519 AAAABENCH bench@psa\n")
    text = (ROOT / "inventory" / "mvp.yml").read_text()
    text = text.replace("~/.ssh/id_ed25519.pub", str(key))
    if count is not None:
        head = text[: text.index("containers:")]
        services = yaml.safe_load(text)["app"]["services"]
        lines = ["containers:"]
        roles = ["postgresql", "redis", "rabbitmq"] + ["app"] * (count - 3)
        for index, role in enumerate(roles):
            lines += [
                f"  - vmid: {100 + index}",
                f"    hostname: psa-bench-{index:03d}",
                f"    role: {role}",
                "    cores: 2",
                "    memory: 2G",
                "    disk: 8G",
                "    bridge: vmbr20",
                f"    address: 10.0.20.{10 + index}",
            ]
            if index == 3:
                lines.append("    services:")
                for port, name in enumerate(services):
                    lines.append(
                        f"      {name}: {{port: {3000 + 10 * port}, instances: 1}}"
                    )
        text = head + "\n".join(lines) + "\n"
    (root / "inventory" / "mvp.yml").write_text(text)
    return root


def run(served: Served, root: Path, cafile: str, *args: str) -> float:
    env = dict(
        os.environ,
        PROXMOX_URL=served.pve.url,
        PROXMOX_TOKEN_ID=TOKEN_ID,
        PROXMOX_TOKEN_SECRET=TOKEN_SECRET,
        PROXMOX_CA_FILE=cafile,
    )
    started = time.monotonic()
    done = subprocess.run(
        [
            str(PSA_INFRA),
            "--root",
            str(root),
            "provision",
            "--containers-only",
            "--yes",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"psa-infra failed ({done.returncode}):\n{done.stderr}")
    return took


def verdict(ok: bool) -> str:
    return "meets the aim" if ok else "MISSES the aim"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-80", action="store_true", help="skip the 80-container run"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as tmp:
        base = Path(tmp)
        pki = make_cert(str(base), hosts=("127.0.0.1",))
        cafile = pki[0]
        shapes.FIXUPS["/nodes/{node}/network"] = [shapes.replace(_networks)]

        served = Served((pki[0], pki[1]), time_scale=0)
        mvp = project(base, None)
        first = run(served, mvp, cafile)
        writes = served.writes()
        again = run(served, mvp, cafile)
        rewrites = served.writes() - writes
        served.stop()
        print(
            f"MVP, 5 containers, first run: {first:.2f} s "
            f"(aim < 1.5 s: {verdict(first < 1.5)}); {writes} write requests"
        )
        print(
            f"MVP, 5 containers, re-run:    {again:.2f} s "
            f"(aim < 1.0 s: {verdict(again < 1.0)}); {rewrites} write requests "
            f"(aim 0: {verdict(rewrites == 0)})"
        )

        for count, parallel in ((20, 5), (80, DEFAULT_PARALLEL)):
            if count == 80 and args.skip_80:
                continue
            served = Served((pki[0], pki[1]), time_scale=0.1)
            served.pve.ct_secs["create"] = 20
            task = 20 * 0.1
            ideal = math.ceil(count / parallel) * task
            extra = ("--parallel", str(parallel)) if count == 20 else ()
            took = run(served, project(base, count), cafile, *extra)
            created = len(served.pve.cts)
            served.stop()
            print(
                f"{count} containers, create {task:.0f} s each, parallel {parallel}: "
                f"{took:.2f} s of ideal {ideal:.0f} s = {took / ideal:.2f} x "
                f"(aim <= 1.1 x: {verdict(took <= 1.1 * ideal)}); {created} created"
            )


if __name__ == "__main__":
    main()
