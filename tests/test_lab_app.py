"""The app as a deployable, for real in the lab.

Provisions the MVP, packages the app twice (two versions) and once broken,
deploys the first, checks every service's health directly and through the
gateway, sends a ticket through the gateway and sees its event counted,
deploys the second version under a steady load through the gateway and
counts failed requests (zero expected), deploys the broken release and sees
it rolled back automatically, then rolls back one release by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_support import ROOT, psa_infra, running_lab

from psa_lab.load import Load

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0,
        reason="the lab needs root on Linux (Debian 12)",
    ),
]

INVENTORY = "inventory/mvp.yml"
# The steady load during a deploy, in requests per second through the gateway.
RATE = 100
GATEWAY = ("10.0.20.50", 3000)
SERVICES = ["api-gateway", "auth", "crm", "tickets", "billing", "projects", "assets",
            "reports"]  # fmt: skip


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    """The lab up with the MVP provisioned; the settings ``lab env`` gives."""
    with running_lab(INVENTORY) as settings:
        psa_infra("provision", "--yes", INVENTORY, env=settings)
        yield settings


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three artifacts: 1.0.0, 1.0.1, and 1.0.2 whose crm never becomes healthy."""
    out = tmp_path_factory.mktemp("releases")
    made = {}
    for version in ("1.0.0", "1.0.1"):
        done = psa_infra("package", "app", "--out", str(out), "--version", version)
        made[version] = Path(done.stdout.split()[0])
    broken = tmp_path_factory.mktemp("broken") / "app"
    shutil.copytree(
        ROOT / "app", broken, ignore=shutil.ignore_patterns("node_modules", "dist")
    )
    crm = broken / "services" / "crm" / "src" / "index.ts"
    crm.write_text("process.exit(3);\n" + crm.read_text())
    done = psa_infra("package", str(broken), "--out", str(out), "--version", "1.0.2")
    made["1.0.2"] = Path(done.stdout.split()[0])
    return made


def gateway(path: str, data: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{GATEWAY[0]}:{GATEWAY[1]}{path}",
        data=data,
        headers={"Content-Type": "application/json"} if data else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def versions(env: dict[str, str]) -> dict[str, str]:
    done = psa_infra("health", "--json", INVENTORY, env=env, check=False)
    return {
        h["service"]: h["version"]
        for h in json.loads(done.stdout)
        if h["status"] == "up"
    }


def test_first_deploy_is_healthy_everywhere(
    env: dict[str, str], releases: dict[str, Path]
) -> None:
    psa_infra("deploy", str(releases["1.0.0"]), INVENTORY, env=env)
    assert versions(env) == {name: "1.0.0" for name in SERVICES}
    for name in SERVICES:
        status, body = gateway(f"/api/v1/{name}/health")
        assert status == 200, (name, body)
        assert body["service"] == name
        assert body["version"] == "1.0.0"


def test_a_ticket_reaches_postgres_and_its_event_is_consumed(
    env: dict[str, str], releases: dict[str, Path]
) -> None:
    status, before = gateway("/api/v1/reports/tickets-created")
    assert status == 200, before
    status, created = gateway(
        "/api/v1/tickets", json.dumps({"title": "printer on fire"}).encode()
    )
    assert status == 201, created
    status, stored = gateway(f"/api/v1/tickets/{created['ticket']['id']}")
    assert status == 200 and stored["ticket"]["title"] == "printer on fire"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, after = gateway("/api/v1/reports/tickets-created")
        if after["count"] > before["count"]:
            break
        time.sleep(0.5)
    assert after["count"] == before["count"] + 1


def test_deploy_under_load_drops_no_request(
    env: dict[str, str], releases: dict[str, Path]
) -> None:
    paths = [f"/api/v1/{n}/health" for n in SERVICES]
    load = Load(*GATEWAY, paths, threads=8, rate=RATE).start()
    time.sleep(2)
    started = time.monotonic()
    psa_infra("deploy", str(releases["1.0.1"]), INVENTORY, env=env)
    took = time.monotonic() - started
    time.sleep(2)
    result = load.stop()
    print(f"deploy {took:.1f} s; {result.requests} requests, {result.failed} failed")
    assert result.requests > RATE * took * 0.9
    assert result.failed == 0, result.errors
    assert versions(env) == {name: "1.0.1" for name in SERVICES}


def test_an_unhealthy_release_is_rolled_back(
    env: dict[str, str], releases: dict[str, Path]
) -> None:
    done = psa_infra(
        "deploy",
        str(releases["1.0.2"]),
        INVENTORY,
        "--health-timeout",
        "20",
        env=env,
        check=False,
    )
    assert done.returncode != 0
    assert "release 1.0.2 did not become healthy" in done.stderr
    assert "rolled back to release 1.0.1, which is healthy" in done.stderr
    assert versions(env) == {name: "1.0.1" for name in SERVICES}
    psa_infra("health", INVENTORY, env=env)


def test_rollback_by_hand_goes_back_one_release(
    env: dict[str, str], releases: dict[str, Path]
) -> None:
    done = psa_infra("rollback", INVENTORY, env=env)
    assert done.stdout.strip() == "psa-app: 1.0.1 -> 1.0.0"
    assert versions(env) == {name: "1.0.0" for name in SERVICES}
    backup = psa_infra("backup", INVENTORY, env=env)
    assert "backup-psa-app: wrote /backup/psa-app/psa-app-" in backup.stdout
