"""The MVP set up for real in the lab: provision, verify, re-run, drift.

Brings the lab up, provisions the MVP inventory into it exactly as an
operator would (``eval "$(psa-infra lab env)"`` then ``psa-infra provision``),
verifies every host with testinfra, checks that a second provision changes
nothing, that drift made by hand shows in the plan and is repaired, and takes
the lab down. Needs root on Debian 12 and the package registries; a few
minutes, most of it apt inside the containers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from lab_support import ROOT, psa_infra, running_lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0,
        reason="the lab needs root on Linux (Debian 12)",
    ),
]

INVENTORY = "inventory/mvp.yml"


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    """The lab up for the MVP; the settings ``lab env`` gives psa-infra."""
    with running_lab(INVENTORY) as settings:
        yield settings


@pytest.fixture(scope="module")
def provisioned(env: dict[str, str]) -> dict[str, Any]:
    done = psa_infra("provision", "--yes", "--json", INVENTORY, env=env)
    report = json.loads(done.stdout)
    return dict(report)


def ssh(env: dict[str, str], address: str, command: str) -> str:
    key = env["PSA_INFRA_SET"].split("ssh.private_key=")[1].split(";")[0]
    done = subprocess.run(
        [
            "ssh",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={env['PSA_INFRA_KNOWN_HOSTS']}",
            "-i", key,
            f"root@{address}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    return done.stdout


def test_first_provision_creates_and_sets_up_every_host(
    provisioned: dict[str, Any],
) -> None:
    created = {c["host"]: c["result"] for c in provisioned["containers"]}
    assert created == {
        "psa-db-master": "created",
        "psa-redis": "created",
        "psa-rabbitmq": "created",
        "psa-elasticsearch": "created",
        "psa-app": "created",
    }
    hosts = {h["host"]: h for h in provisioned["hosts"]}
    assert set(hosts) == set(created)
    for host in hosts.values():
        assert host["error"] is None, host["error"]
        assert host["changed"] > 0
    # The app was set up after the data services it connects to.
    order = [h["host"] for h in provisioned["hosts"]]
    assert order[-1] == "psa-app"


def test_verify_is_green(env: dict[str, str], provisioned: dict[str, Any]) -> None:
    done = psa_infra("verify", "--json", INVENTORY, env=env)
    checks = json.loads(done.stdout)
    failed = [c for c in checks if c["status"] == "fail"]
    assert failed == []
    unavailable = [c for c in checks if c["status"] == "unavailable"]
    assert [(c["host"], c["check"]) for c in unavailable] == [
        ("psa-elasticsearch", "elasticsearch service")
    ]
    assert "no package source is reachable" in unavailable[0]["detail"]
    names = {(c["host"], c["check"]) for c in checks}
    for expected in [
        ("psa-db-master", "postgresql max_connections"),
        ("psa-db-master", "postgresql app database"),
        ("psa-redis", "redis requires a password"),
        ("psa-redis", "redis app password and policy"),
        ("psa-rabbitmq", "rabbitmq users"),
        ("psa-rabbitmq", "rabbitmq app login"),
        ("psa-app", "pm2 ecosystem loads"),
        ("psa-app", "data services reachable"),
        ("psa-app", "file /opt/psa-platform/.env"),
    ]:
        assert expected in names
    assert "1 unavailable" in done.stderr


def test_second_provision_changes_nothing(
    env: dict[str, str], provisioned: dict[str, Any]
) -> None:
    again = json.loads(
        psa_infra("provision", "--yes", "--json", INVENTORY, env=env).stdout
    )
    assert again["containers"] == []
    assert {h["host"]: h["changed"] for h in again["hosts"]} == {
        h["host"]: 0 for h in provisioned["hosts"]
    }
    plan = psa_infra("plan", "--detailed-exitcode", INVENTORY, env=env)
    assert plan.returncode == 0
    assert "No changes" in plan.stdout


def test_drift_shows_in_the_plan_and_is_repaired(
    env: dict[str, str], provisioned: dict[str, Any]
) -> None:
    ssh(env, "10.0.20.20", "echo 'maxclients 7' >> /etc/redis/redis.conf")
    plan = psa_infra("plan", "--detailed-exitcode", INVENTORY, env=env, check=False)
    assert plan.returncode == 2, plan.stderr
    assert "+maxclients 7" not in plan.stdout  # redis.conf holds its password
    assert "redis: " in plan.stdout and "/etc/redis/redis.conf" in plan.stdout
    fixed = json.loads(
        psa_infra("provision", "--yes", "--json", INVENTORY, env=env).stdout
    )
    redis = next(h for h in fixed["hosts"] if h["host"] == "psa-redis")
    changed = [s["step"] for s in redis["steps"] if s["status"] == "changed"]
    assert any("restart" in step for step in changed), changed
    assert "maxclients 7" not in ssh(env, "10.0.20.20", "cat /etc/redis/redis.conf")
    psa_infra("verify", "--only", "psa-redis", INVENTORY, env=env)


def test_lab_inventory_is_the_operators_own(env: dict[str, str]) -> None:
    # Nothing in the project was rewritten for the lab: only lab env's settings.
    assert (ROOT / INVENTORY).read_text().count("packages:") == 0
    assert "packages.elasticsearch=none" in env["PSA_INFRA_SET"]
