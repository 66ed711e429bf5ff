"""A service migration's wall time and failed requests under steady load.

Needs the lab (it brings it up with the MVP when it is down, and takes it
down again at the end in that case). Provisions the MVP with the connection
budget a migration needs, packages and deploys the app, then for each
service given (``auth`` by default) runs ``migrate-service`` under a steady
load through the gateway (10.0.20.50:3000): ``--rate`` requests per second
to every service's health, one new connection per request. Then rolls each
migration back under the same load. Prints the wall time of each step of
the journal, the whole migration's and the rollback's, and the failed
requests. Aim: zero failed requests.

    .venv/bin/python benchmarks/bench_migrate.py [auth crm ...] [--rate 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from psa_lab.load import Load, LoadResult  # noqa: E402

CLI = [sys.executable, str(ROOT / "cli.py"), "--root", str(ROOT)]
GATEWAY = ("10.0.20.50", 3000)
SERVICES = ["api-gateway", "auth", "crm", "tickets", "billing", "projects", "assets",
            "reports"]  # fmt: skip


def psa(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        sys.exit(f"psa-infra {' '.join(args)} failed:\n{done.stderr}")
    return done


def lab_env() -> dict[str, str]:
    exported = psa("lab", "env").stdout
    shell = subprocess.run(
        ["bash", "-c", exported + "\nenv -0"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(item.partition("=")[::2] for item in shell.stdout.split("\0") if item)


def under_load(
    rate: float, *args: str, env: dict[str, str]
) -> tuple[float, LoadResult]:
    paths = [f"/api/v1/{name}/health" for name in SERVICES]
    load = Load(*GATEWAY, paths, threads=8, rate=rate, max_seconds=900).start()
    time.sleep(2)
    started = time.monotonic()
    psa(*args, env=env)
    took = time.monotonic() - started
    time.sleep(2)
    return took, load.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("services", nargs="*", default=["auth"])
    parser.add_argument("--rate", type=float, default=100, help="requests per second")
    options = parser.parse_args()
    brought_up = (
        subprocess.run([*CLI, "lab", "env"], capture_output=True).returncode != 0
    )
    if brought_up:
        psa("lab", "up", "inventory/mvp.yml")
    try:
        with tempfile.TemporaryDirectory(prefix="psa-bench-") as work:
            env = {**os.environ, **lab_env()}
            env["PSA_INFRA_SET"] += ";postgresql.max_connections=700"
            env["PSA_INFRA_STATE"] = str(Path(work) / "state")
            psa("provision", "--yes", "inventory/mvp.yml", env=env)
            stamp = time.strftime("%Y%m%d%H%M%S")
            artifact = psa(
                "package", "app", "--out", work, "--version", f"bench-{stamp}"
            ).stdout.split()[0]
            psa("deploy", artifact, "inventory/mvp.yml", env=env)
            print(f"{'service':>12} {'what':>9} {'seconds':>8} {'requests':>9} "
                  f"{'failed':>7}  steps (s)")  # fmt: skip
            total = 0
            for service in options.services:
                for what, flags in (("migrate", []), ("rollback", ["--rollback"])):
                    journal = (
                        Path(env["PSA_INFRA_STATE"])
                        / "migrations"
                        / ("psa-mvp")
                        / f"{service}.json"
                    )
                    took, result = under_load(
                        options.rate,
                        "-v", "migrate-service", service, "--yes", "--releases", work,
                        *flags, env=env,
                    )  # fmt: skip
                    steps = ""
                    if journal.exists():
                        times = json.loads(journal.read_text()).get("seconds", {})
                        steps = " ".join(f"{k} {v:.1f}" for k, v in times.items())
                    total += result.failed
                    print(
                        f"{service:>12} {what:>9} {took:8.1f} "
                        f"{result.requests:>9} {result.failed:>7}  {steps}"
                    )
                    for error in result.errors[:5]:
                        print(f"    {error}")
            print(f"failed requests in all runs: {total} (aim: 0)")
    finally:
        if brought_up:
            psa("lab", "down")


if __name__ == "__main__":
    main()
