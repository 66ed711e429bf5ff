"""Service migration without hosts: the layouts its journals imply and the CLI.

The migration itself runs for real in tests/test_lab_migrate.py; here are
the parts that need no cluster: how a journal's stage changes the layout
every command sees, what the gateway's upstream map becomes at each stage,
the atomic journal, and the command's answers to journals in each state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from psa_infra.inventory import LoadedInventory, load_inventory
from psa_infra.placement import (
    Move,
    apply_moves,
    journals_dir,
    moves_of,
    with_moves,
    write_journal,
)
from psa_infra.render import Renderer
from psa_infra.secrets import masked_secrets

Run = Callable[..., Any]


@pytest.fixture
def mvp(project_root: Path) -> LoadedInventory:
    return load_inventory(project_root / "inventory/mvp.yml")


@pytest.fixture
def production(project_root: Path) -> LoadedInventory:
    return load_inventory(project_root / "inventory/production.yml")


def move(production: LoadedInventory, service: str, stage: str) -> Move:
    target = production.inventory.placement()[service]
    return Move(service, "psa-app", target, stage)


def upstream_map(
    project_root: Path, loaded: LoadedInventory, host: str
) -> dict[str, Any]:
    renderer = Renderer(project_root / "templates", loaded, masked_secrets(loaded))
    container = loaded.inventory.find(host)
    text = renderer.render("app/upstreams.json.j2", renderer.context(container))
    return dict(json.loads(text))


def test_each_stage_places_and_routes_the_service(
    project_root: Path, mvp: LoadedInventory, production: LoadedInventory
) -> None:
    staged = with_moves(mvp, [move(production, "auth", "staged")])
    app = staged.inventory.find("psa-app")
    auth = staged.inventory.find("psa-auth")
    assert "auth" in app.services and list(auth.services) == ["auth"]
    assert auth.services["auth"].instances == 3  # the target layout's count
    assert staged.inventory.placement()["auth"].hostname == "psa-app"
    services = upstream_map(project_root, staged, "psa-app")["services"]
    assert services["auth"] == {"host": "127.0.0.1", "port": 3010}

    routed = with_moves(mvp, [move(production, "auth", "routed")])
    assert "auth" in routed.inventory.find("psa-app").services
    services = upstream_map(project_root, routed, "psa-app")["services"]
    assert services["auth"] == {"host": "10.0.20.51", "port": 3010}

    moved = with_moves(mvp, [move(production, "auth", "moved")])
    assert "auth" not in moved.inventory.find("psa-app").services
    services = upstream_map(project_root, moved, "psa-app")["services"]
    assert services["auth"] == {"host": "10.0.20.51", "port": 3010}
    assert services["crm"] == {"host": "127.0.0.1", "port": 3020}
    # The file's layout is not changed by applying moves to it.
    assert "auth" in mvp.inventory.find("psa-app").services


def test_a_moved_gateway_leaves_a_forwarding_stage(
    project_root: Path, mvp: LoadedInventory, production: LoadedInventory
) -> None:
    staged = with_moves(mvp, [move(production, "api-gateway", "staged")])
    assert "forward" not in upstream_map(project_root, staged, "psa-app")
    # The new gateway reaches the services still on psa-app by its address.
    new = upstream_map(project_root, staged, "psa-api-gateway")["services"]
    assert new["auth"] == {"host": "10.0.20.50", "port": 3010}

    moved = with_moves(mvp, [move(production, "api-gateway", "moved")])
    assert "api-gateway" in moved.inventory.find("psa-app").services
    old = upstream_map(project_root, moved, "psa-app")
    assert old["forward"] == {"host": "10.0.20.52", "port": 3000}
    assert moved.inventory.placement()["api-gateway"].hostname == "psa-api-gateway"


def test_every_service_moved_is_the_production_layout(
    mvp: LoadedInventory, production: LoadedInventory
) -> None:
    services = mvp.inventory.app.services
    layout = apply_moves(
        mvp.inventory, [move(production, s, "moved") for s in services]
    )
    # psa-app keeps only the forwarding stage on the old public address.
    names = {c.hostname for c in layout.containers}
    assert names == {c.hostname for c in production.inventory.containers} | {"psa-app"}
    assert list(layout.find("psa-app").services) == ["api-gateway"]
    for container in layout.containers:
        if container.hostname != "psa-app":
            assert container == production.inventory.find(container.hostname)


def test_an_app_container_left_with_nothing_leaves_the_layout(
    mvp: LoadedInventory, production: LoadedInventory
) -> None:
    services = [s for s in mvp.inventory.app.services if s != "api-gateway"]
    without_gateway = apply_moves(
        mvp.inventory, [move(production, s, "moved") for s in services]
    )
    assert list(without_gateway.find("psa-app").services) == ["api-gateway"]
    # Had the gateway lived elsewhere, psa-app would run nothing at all.
    alone = mvp.inventory.model_copy(
        update={
            "containers": [
                c.model_copy(
                    update={
                        "services": {k: v for k, v in c.services.items() if k == "auth"}
                    }
                )
                for c in mvp.inventory.containers
            ]
        }
    )
    layout = apply_moves(alone, [move(production, "auth", "moved")])
    assert "psa-app" not in {c.hostname for c in layout.containers}


def test_journals_are_replaced_atomically_and_read_in_order(tmp_path: Path) -> None:
    folder = journals_dir(tmp_path, "psa-mvp")
    path = folder / "auth.json"
    write_journal(path, {"format": 1, "service": "auth", "stage": "none"})
    assert json.loads(path.read_text())["stage"] == "none"
    assert [p.name for p in folder.iterdir()] == ["auth.json"]  # no temporary left
    assert moves_of(tmp_path, "psa-mvp") == []


def test_a_damaged_journal_is_named_with_its_line(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PSA_INFRA_STATE", str(tmp_path))
    folder = journals_dir(tmp_path, "psa-mvp")
    folder.mkdir(parents=True)
    (folder / "auth.json").write_text('{"format": 1,\n "stage": }\n')
    result = cli("plan", "--offline", "inventory/mvp.yml")
    assert result.exit_code == 1
    assert "auth.json line 2: not a migration journal" in result.stderr
    assert "Traceback" not in result.stderr


def journal(
    tmp_path: Path, production: LoadedInventory, service: str, **values: Any
) -> Path:
    target = production.inventory.placement()[service]
    data = {
        "format": 1,
        "service": service,
        "source": {"hostname": "psa-app", "vmid": 150, "address": "10.0.20.50"},
        "target": {"container": target.model_dump(mode="json")},
        "stage": "moved",
        "status": "done",
        "done": [
            "preflight",
            "snapshot",
            "container",
            "setup",
            "deploy",
            "route",
            "retire",
            "verify",
        ],  # fmt: skip
        "running": None,
        "started": "2026-12-01T10:00:00.000000Z",
    }
    data.update(values)
    path = journals_dir(tmp_path, "psa-mvp") / f"{service}.json"
    write_journal(path, data)
    return path


def test_later_commands_see_a_migrated_service_where_it_lives(
    cli: Run,
    tmp_path: Path,
    production: LoadedInventory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PSA_INFRA_STATE", str(tmp_path))
    journal(tmp_path, production, "auth")
    result = cli("plan", "--offline", "--json", "inventory/mvp.yml")
    assert result.exit_code == 0, result.stderr
    assert "migrated services: auth -> psa-auth" in result.stderr
    hosts = {a["host"] for a in json.loads(result.stdout)["actions"]}
    assert "psa-auth" in hosts and "psa-app" in hosts
    # validate checks the file as written.
    result = cli("validate", "inventory/mvp.yml")
    assert result.exit_code == 0 and "migrated" not in result.stderr


def test_a_finished_migration_is_a_no_op(
    cli: Run,
    tmp_path: Path,
    production: LoadedInventory,
    monkeypatch: pytest.MonkeyPatch,
    secrets_env: dict[str, str],
) -> None:
    monkeypatch.setenv("PSA_INFRA_STATE", str(tmp_path))
    journal(tmp_path, production, "auth")
    result = cli("migrate-service", "auth", "--yes")
    assert result.exit_code == 0, result.stderr
    assert "auth already lives on psa-auth (121, 10.0.20.51); nothing to do" in (
        result.stdout
    )


def test_an_unfinished_migration_asks_for_resume_or_rollback(
    cli: Run,
    tmp_path: Path,
    production: LoadedInventory,
    monkeypatch: pytest.MonkeyPatch,
    secrets_env: dict[str, str],
) -> None:
    monkeypatch.setenv("PSA_INFRA_STATE", str(tmp_path))
    journal(
        tmp_path,
        production,
        "crm",
        stage="routed",
        status="failed",
        done=["preflight", "snapshot", "container", "setup", "deploy"],
        error="something broke",
    )
    result = cli("migrate-service", "crm", "--yes")
    assert result.exit_code == 8
    assert "the migration of crm is unfinished (failed at step 'deploy'" in (
        result.stderr
    )
    assert "--resume" in result.stderr and "--rollback" in result.stderr
    result = cli("migrate-service", "crm", "--dry-run", "--rollback")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.index("deploy") < result.stdout.index("preflight")


def test_dry_run_lists_every_step_and_changes_nothing(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PSA_INFRA_STATE", str(tmp_path))
    result = cli("migrate-service", "auth", "--dry-run")
    assert result.exit_code == 0, result.stderr
    for step in ("preflight", "snapshot", "container", "setup", "deploy", "route",
                 "retire", "verify"):  # fmt: skip
        assert step in result.stdout
    assert "10.0.20.51:3010" in result.stdout
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope", "--dry-run"], "no service 'nope' in inventory/mvp.yml"),
        (["auth", "--resume"], "there is no migration of auth to resume"),
        (["auth", "--rollback"], "there is no migration of auth to roll back"),
        (["auth", "--resume", "--rollback"], "--resume and --rollback exclude"),
        (
            ["auth", "--to-inventory", "inventory/mvp.yml", "--dry-run"],
            "are the same layout",
        ),
    ],
)
def test_wrong_requests_are_refused_before_any_change(
    cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    secrets_env: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("PSA_INFRA_STATE", str(tmp_path))
    result = cli("migrate-service", *args)
    assert result.exit_code == 8, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_migration_of_the_inventory_stops_at_once(
    cli: Run,
    tmp_path: Path,
    production: LoadedInventory,
    monkeypatch: pytest.MonkeyPatch,
    secrets_env: dict[str, str],
) -> None:
    from psa_infra.migrate import locked

    monkeypatch.setenv("PSA_INFRA_STATE", str(tmp_path))
    journal(tmp_path, production, "crm", stage="staged", status="running",
            done=["preflight", "snapshot", "container"], running="setup")  # fmt: skip
    with locked(journals_dir(tmp_path, "psa-mvp")):
        result = cli("migrate-service", "auth", "--yes")
        assert result.exit_code == 8
        assert "another psa-infra migration of this inventory is running" in (
            result.stderr
        )
        # A dry run changes nothing and is not held up.
        result = cli("migrate-service", "crm", "--dry-run")
        assert result.exit_code == 0, result.stderr
        assert "done" in result.stdout
