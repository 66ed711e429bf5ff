"""migrate-service for real in the lab: MVP to production, one service at a time.

Provisions and deploys the MVP, then migrates: auth under a steady load
through the gateway (no failed request), crm with psa-infra killed in each
step in turn and resumed, tickets killed in each step in turn and rolled
back each time (then migrated), the gateway itself under load through its
old public address, and the rest, until a live plan against the production
inventory has nothing left to do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab_support import ROOT, psa_infra, running_lab

from psa_infra.migrate import STEP_NAMES
from psa_lab.load import Load

pytestmark = [
    pytest.mark.lab,
    pytest.mark.migration,
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0,
        reason="the lab needs root on Linux (Debian 12)",
    ),
]

MVP = "inventory/mvp.yml"
PRODUCTION = "inventory/production.yml"
PUBLIC = ("10.0.20.50", 3000)
RATE = 100
SERVICES = ["api-gateway", "auth", "crm", "tickets", "billing", "projects", "assets",
            "reports"]  # fmt: skip
VMIDS = {"psa-app": 150, "psa-auth": 121, "psa-api-gateway": 122, "psa-crm": 123,
         "psa-tickets": 124, "psa-billing": 125, "psa-projects": 126,
         "psa-assets": 127, "psa-reports": 128}  # fmt: skip


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The MVP provisioned and deployed, with the budget a migration needs."""
    state = tmp_path_factory.mktemp("state")
    releases = tmp_path_factory.mktemp("releases")
    with running_lab(MVP) as settings:
        # Raised before migrating, as inventory/mvp.yml says (a PostgreSQL
        # restart, before any load).
        settings["PSA_INFRA_SET"] += ";postgresql.max_connections=700"
        settings["PSA_INFRA_STATE"] = str(state)
        settings["PSA_TEST_RELEASES"] = str(releases)
        psa_infra("provision", "--yes", MVP, env=settings)
        done = psa_infra("package", "app", "--out", str(releases), "--version", "2.0.0")
        psa_infra("deploy", done.stdout.split()[0], MVP, env=settings)
        yield settings


def migrate(env: dict[str, str], service: str, *flags: str, check: bool = True):  # type: ignore[no-untyped-def]
    return psa_infra(
        "migrate-service", service, "--yes", "--releases",
        env["PSA_TEST_RELEASES"], *flags, env=env, check=check,
    )  # fmt: skip


def pm2_apps(host: str) -> set[str]:
    """The PM2 apps running on a lab container."""
    done = subprocess.run(
        ["lxc-attach", "-n", f"psa-lab-{VMIDS[host]}", "--", "runuser", "-u", "psa",
         "--", "env", "PM2_HOME=/var/lib/psa/.pm2", "pm2", "jlist"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    text = done.stdout
    return {p["name"] for p in json.loads(text[text.index("[") :])}


def through_gateway(service: str) -> tuple[int, str, str]:
    """(status, the gateway that routed it, the host that answered) via PUBLIC."""
    url = f"http://{PUBLIC[0]}:{PUBLIC[1]}/api/v1/{service}/health"
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = json.loads(answer.read())
        return answer.status, answer.headers.get("x-psa-gateway", ""), body["host"]


def served_only_by(service: str, host: str) -> None:
    """The service runs in exactly one place, and the gateway reaches it there."""
    holders = {h for h in ("psa-app", host) if service in pm2_apps(h)}
    assert holders == {host}
    answers = {through_gateway(service)[2] for _ in range(8)}
    assert answers == {host}


def journal(env: dict[str, str], service: str) -> dict[str, object]:
    path = Path(env["PSA_INFRA_STATE"]) / "migrations" / "psa-mvp" / f"{service}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


def run_until(env: dict[str, str], service: str, step: str, *flags: str) -> str:
    """Start a migration and kill psa-infra (SIGKILL) once ``step`` runs.

    Returns the step it was killed in ("" when it ended first).
    """
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "--root", str(ROOT), "migrate-service",
         service, "--yes", "--releases", env["PSA_TEST_RELEASES"], *flags],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while process.poll() is None:
            running = journal(env, service).get("running")
            if running == step or (
                running in STEP_NAMES
                and STEP_NAMES.index(str(running)) > STEP_NAMES.index(step)
            ):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return str(running)
            time.sleep(0.02)
        return ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_auth_moves_under_load_with_no_failed_request(lab: dict[str, str]) -> None:
    paths = [f"/api/v1/{s}/health" for s in SERVICES]
    load = Load(*PUBLIC, paths=["/api/v1/auth/health", *paths], rate=RATE).start()
    started = time.monotonic()
    migrate(lab, "auth")
    took = time.monotonic() - started
    time.sleep(2)
    result = load.stop()
    print(f"migrate auth {took:.1f} s; {result.requests} requests, {result.failed} "
          "failed")  # fmt: skip
    assert result.requests > RATE * took * 0.9
    assert result.failed == 0, result.errors
    served_only_by("auth", "psa-auth")
    # Later commands know where it lives.
    health = json.loads(psa_infra("health", "--json", MVP, env=lab).stdout)
    assert {(h["host"], h["status"]) for h in health if h["service"] == "auth"} == {
        ("psa-auth", "up")
    }
    again = migrate(lab, "auth")
    assert "auth already lives on psa-auth" in again.stdout


def test_killed_in_each_step_then_resumed_it_completes(lab: dict[str, str]) -> None:
    killed = []
    for index, step in enumerate(STEP_NAMES):
        if index and step in journal(lab, "crm").get("done", []):  # type: ignore[operator]
            continue
        killed.append(run_until(lab, "crm", step, *(["--resume"] if index else [])))
    print("killed in:", killed)
    assert set(killed) - {""} >= {"container", "setup", "deploy", "route", "retire"}
    done = migrate(lab, "crm", "--resume")
    assert "crm now runs on psa-crm" in done.stdout
    served_only_by("crm", "psa-crm")


def test_killed_in_each_step_then_rolled_back_it_is_back(lab: dict[str, str]) -> None:
    # The container exists beforehand (adopted), so undoing the migration
    # keeps it and each round skips the package installs.
    psa_infra("provision", "--yes", PRODUCTION, "--only", "psa-tickets", env=lab)
    for step in STEP_NAMES:
        killed = run_until(lab, "tickets", step)
        print(f"killed in {killed or '(ended first)'}; rolling back")
        rolled = migrate(lab, "tickets", "--rollback")
        assert "tickets is back on psa-app" in rolled.stdout
        assert "tickets" in pm2_apps("psa-app")
        assert "tickets" not in pm2_apps("psa-tickets")
        assert {through_gateway("tickets")[2] for _ in range(6)} == {"psa-app"}
    migrate(lab, "tickets")
    served_only_by("tickets", "psa-tickets")


def test_the_gateway_moves_and_its_old_address_keeps_answering(
    lab: dict[str, str],
) -> None:
    paths = [f"/api/v1/{s}/health" for s in SERVICES]
    load = Load(*PUBLIC, paths=paths, rate=RATE).start()
    migrate(lab, "api-gateway")
    time.sleep(2)
    result = load.stop()
    print(f"migrate api-gateway: {result.requests} requests, {result.failed} failed")
    assert result.failed == 0, result.errors
    status, gateway, _ = through_gateway("crm")
    assert (status, gateway) == (200, "psa-api-gateway")


def test_every_service_moved_leaves_nothing_to_plan(lab: dict[str, str]) -> None:
    rest = ["billing", "projects", "assets", "reports"]
    hosts = [f"psa-{s}" for s in rest]
    only = [arg for host in hosts for arg in ("--only", host)]
    psa_infra("provision", "--yes", PRODUCTION, *only, env=lab)
    for service in rest:
        migrate(lab, service)
    plan = psa_infra("plan", PRODUCTION, "--detailed-exitcode", env=lab, check=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    health = json.loads(psa_infra("health", "--json", MVP, env=lab).stdout)
    placed = {h["service"]: h["host"] for h in health if h["host"] != "psa-app"}
    assert placed == {s: f"psa-{s}" for s in SERVICES}
    assert all(h["status"] == "up" for h in health)
