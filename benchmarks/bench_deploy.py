"""Failed requests during a deploy under steady load, and the deploy's wall time.

Needs the lab with the MVP provisioned (it brings the lab up and provisions
it when the lab is down, and takes it down again at the end in that case).
Packages two releases of app/, deploys the first, then deploys the other one
``--runs`` times in turn under a steady load through the gateway
(10.0.20.50:3000): ``--rate`` requests per second (100 by default; 0 sends
them as fast as eight threads can) to every service's health, one new
connection per request. Prints each deploy's wall time and the failed-request count.
Aim: zero failed requests.

    .venv/bin/python benchmarks/bench_deploy.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from psa_lab.load import Load  # noqa: E402

CLI = [sys.executable, str(ROOT / "cli.py"), "--root", str(ROOT)]
GATEWAY = ("10.0.20.50", 3000)
SERVICES = ["api-gateway", "auth", "crm", "tickets", "billing", "projects", "assets",
            "reports"]  # fmt: skip


def psa(*args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        sys.exit(f"psa-infra {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def lab_env() -> dict[str, str]:
    exported = psa("lab", "env")
    shell = subprocess.run(
        ["bash", "-c", exported + "\nenv -0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(item.partition("=")[::2] for item in shell.stdout.split("\0") if item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=100, help="requests per second (0: flat out)"
    )
    options = parser.parse_args()
    runs, rate = options.runs, options.rate
    # `lab env` answers only while a lab is up.
    brought_up = (
        subprocess.run([*CLI, "lab", "env"], capture_output=True).returncode != 0
    )
    if brought_up:
        psa("lab", "up", "inventory/mvp.yml")
    try:
        env = {**os.environ, **lab_env()}
        psa("provision", "--yes", "inventory/mvp.yml", env=env)
        with tempfile.TemporaryDirectory(prefix="psa-bench-") as out:
            stamp = time.strftime("%Y%m%d%H%M%S")
            artifacts = [
                psa(
                    "package", "app", "--out", out, "--version", f"bench-{stamp}-{n}"
                ).split()[0]
                for n in (1, 2)
            ]
            psa("deploy", artifacts[0], "inventory/mvp.yml", env=env)
            print(f"{'run':>3} {'release':>24} {'deploy':>8} {'requests':>9} "
                  f"{'failed':>7} {'req/s':>7}")  # fmt: skip
            total_failed = 0
            for run in range(runs):
                artifact = artifacts[(run + 1) % 2]
                paths = [f"/api/v1/{name}/health" for name in SERVICES]
                load = Load(
                    *GATEWAY, paths, threads=8, rate=rate, max_seconds=600
                ).start()
                time.sleep(2)
                started = time.monotonic()
                psa("deploy", artifact, "inventory/mvp.yml", env=env)
                took = time.monotonic() - started
                time.sleep(2)
                result = load.stop()
                total_failed += result.failed
                name = (
                    Path(artifact).name.removeprefix("psa-app-").removesuffix(".tar.gz")
                )
                print(
                    f"{run + 1:>3} {name:>24} {took:7.1f}s {result.requests:>9} "
                    f"{result.failed:>7} {result.rate:7.0f}"
                )
                for error in result.errors[:5]:
                    print(f"    {error}")
            print(f"failed requests in all runs: {total_failed} (aim: 0)")
    finally:
        if brought_up:
            psa("lab", "down")


if __name__ == "__main__":
    main()
