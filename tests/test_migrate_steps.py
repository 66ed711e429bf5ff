"""Migration steps that need no host: the API steps and the failure path.

The snapshot and container steps run against fakepve (the PVE schema and
its task model); the order in which a failed migration points the gateway
back is checked with the host steps recorded instead of run. The host steps
themselves run for real in tests/test_lab_migrate.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from psa_infra.cli import _client
from psa_infra.errors import MigrationError
from psa_infra.inventory import load_inventory
from psa_infra.migrate import STEP_NAMES, Migration, Setting
from psa_infra.placement import moves_of
from psa_infra.secrets import masked_secrets
from psa_infra.ssh import KnownHosts

pytestmark = [
    pytest.mark.usefixtures("api_responses"),
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
]

Run = Callable[..., Any]


def setting(root: Path, state: Path) -> Setting:
    source = load_inventory(root / "inventory/mvp.yml")
    return Setting(
        root=root,
        state=state,
        source=source,
        target=load_inventory(root / "inventory/production.yml"),
        secrets=masked_secrets(source),
        playbooks={},
        known_hosts=KnownHosts(state / "known_hosts"),
        public_key="ssh-ed25519 AAAATEST psa@test",
        client_factory=_client,
        releases=state / "releases",
        templates=root / "templates",
        task_timeout=60.0,
    )


@pytest.fixture
def started(
    pve: Any, cli: Run, project_root: Path, tmp_path: Path, secrets_env: Any
) -> Migration:
    """The MVP's containers exist; a migration of auth has its journal."""
    done = cli("provision", "--containers-only", "--yes", "inventory/mvp.yml")
    assert done.exit_code == 0, done.stderr
    migration = Migration(setting(project_root, tmp_path / "state"), "auth")
    migration.start()
    return migration


def snapshots(pve: Any, vmid: int) -> list[str]:
    client = _client()
    try:
        listed = client.get(f"/nodes/pve/lxc/{vmid}/snapshot") or []
    finally:
        client.close()
    return sorted(s["name"] for s in listed if s["name"] != "current")


def vmids() -> set[int]:
    client = _client()
    try:
        return {int(r["vmid"]) for r in client.get("/cluster/resources") or []
                if r.get("type") == "lxc"}  # fmt: skip
    finally:
        client.close()


def test_the_old_container_is_snapshotted_once_and_the_undo_deletes_it(
    started: Migration, pve: Any
) -> None:
    client = _client()
    try:
        assert started._snapshot_support(client, started.old) is None
    finally:
        client.close()
    assert started.journal is not None
    started.journal.set(snapshot_supported=None)
    started._do_snapshot()
    name = started.journal.data["snapshot"]
    assert name.startswith("psa-pre-auth-")
    assert snapshots(pve, 150) == [name]
    started._do_snapshot()  # a resumed step finds it and takes no second one
    assert snapshots(pve, 150) == [name]
    started._undo_snapshot()
    assert snapshots(pve, 150) == []


def test_storage_without_snapshots_is_named_and_skipped(
    started: Migration, pve: Any
) -> None:
    pve.storages["local-lvm"]["type"] = "dir"
    client = _client()
    try:
        why = started._snapshot_support(client, started.old)
    finally:
        client.close()
    assert why == "storage local-lvm (dir) cannot snapshot containers"
    assert started.journal is not None
    started.journal.set(snapshot_supported=why)
    started._do_snapshot()
    assert snapshots(pve, 150) == []


def test_a_created_container_is_destroyed_by_the_undo(
    started: Migration, pve: Any
) -> None:
    started._do_container()
    assert started.journal is not None
    assert started.journal.data["created"] is True
    assert 121 in vmids()
    started._do_container()  # again: it exists and matches, nothing to do
    started._undo_container()
    assert 121 not in vmids()
    assert started.journal.data["created"] is False


def test_an_adopted_container_is_kept_by_the_undo(
    pve: Any, cli: Run, project_root: Path, tmp_path: Path, secrets_env: Any
) -> None:
    for inventory, only in (("mvp", []), ("production", ["--only", "psa-auth"])):
        done = cli("provision", "--containers-only", "--yes",
                   f"inventory/{inventory}.yml", *only)  # fmt: skip
        assert done.exit_code == 0, done.stderr
    migration = Migration(setting(project_root, tmp_path / "state"), "auth")
    migration.start()
    migration._do_container()
    assert migration.journal is not None
    assert not migration.journal.data.get("created")
    migration._undo_container()
    assert 121 in vmids()


class Recorded(Migration):
    """A migration whose host steps are recorded instead of run."""

    def __init__(self, setting: Setting, service: str, failing: str) -> None:
        super().__init__(setting, service)
        self.failing = failing
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name.startswith(("_do_", "_undo_")):
            step = name.split("_")[-1]
            # A step with nothing to undo has no such method: stay missing.
            super().__getattribute__(name)

            def recorded() -> None:
                self.calls.append(name.strip("_"))
                if name.startswith("_do_") and step == self.failing:
                    raise MigrationError(f"{step} broke")
                # The stage changes as the real steps change it.
                stage = {"do_setup": "staged", "do_route": "routed",
                         "do_retire": "moved", "undo_retire": "routed",
                         "undo_route": "staged"}.get(name.strip("_"))  # fmt: skip
                if stage and self.journal is not None:
                    self.journal.set(stage=stage)

            return recorded
        return super().__getattribute__(name)


def failed_run(
    root: Path, state: Path, failing: str
) -> tuple[Recorded, MigrationError]:
    """A recorded migration of auth that fails in step ``failing``."""
    migration = Recorded(setting(root, state), "auth", failing)
    migration.start()
    with pytest.raises(MigrationError) as raised:
        migration.run()
    return migration, raised.value


@pytest.mark.parametrize("failing", ["route", "retire", "verify"])
def test_a_failure_after_routing_points_the_gateway_back_first(
    project_root: Path, tmp_path: Path, failing: str
) -> None:
    migration, error = failed_run(project_root, tmp_path, failing)
    ran = STEP_NAMES[: STEP_NAMES.index(failing) + 1]
    # verify changes nothing, so it has nothing to undo.
    undone = [s for s in ("retire", "route") if s in ran]
    assert migration.calls == [f"do_{s}" for s in ran] + [f"undo_{s}" for s in undone]
    assert "the gateway sends auth to psa-app again" in error.message
    assert "--resume (or --rollback)" in str(error.hint)
    assert migration.journal is not None
    assert migration.journal.status == "failed"
    assert migration.journal.stage == "staged"
    assert migration.journal.done == list(STEP_NAMES[: STEP_NAMES.index("route")])
    # What the other commands see: auth runs on both, routed to psa-app.
    (move,) = moves_of(tmp_path, "psa-mvp")
    assert (move.service, move.stage) == ("auth", "staged")


@pytest.mark.parametrize("failing", ["container", "deploy"])
def test_a_failure_before_routing_leaves_the_done_steps(
    project_root: Path, tmp_path: Path, failing: str
) -> None:
    migration, error = failed_run(project_root, tmp_path, failing)
    assert not [c for c in migration.calls if c.startswith("undo_")]
    assert "again" not in error.message
    assert migration.journal is not None
    assert migration.journal.done == list(STEP_NAMES[: STEP_NAMES.index(failing)])


def test_rollback_undoes_the_done_steps_and_the_running_one_last_first(
    project_root: Path, tmp_path: Path
) -> None:
    migration = Recorded(setting(project_root, tmp_path), "auth", failing="")
    migration.start()
    assert migration.journal is not None
    migration.journal.set(
        done=["preflight", "snapshot", "container", "setup", "deploy"],
        running="route",
        stage="routed",
    )
    migration.roll_back()
    assert migration.calls == [
        "undo_route", "undo_deploy", "undo_container", "undo_snapshot",
    ]  # fmt: skip
    assert moves_of(tmp_path, "psa-mvp") == []
    assert not migration.path.exists()
    assert [p.name.split("-")[0] for p in (migration.folder / "history").iterdir()] == [
        "auth"
    ]
