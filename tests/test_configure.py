"""Playbook steps applied over real SSH (a loopback sshd), in a scratch folder.

The steps here touch only the test's own temporary folder, so they can run
on the test machine itself; the lab tests run the real role playbooks in
real containers.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from sshd_support import Server, server

from psa_infra.configure import CHANGED, FAILED, OK, HostRun
from psa_infra.inventory import load_inventory
from psa_infra.playbooks import Playbook
from psa_infra.render import Renderer
from psa_infra.secrets import resolve_secrets
from psa_infra.ssh import Connection, KnownHosts, Target

__all__ = ["server"]


class CountingConnection(Connection):
    """A connection that counts the commands it sends."""

    commands = 0

    def run(self, command: str, **kwargs: Any) -> Any:
        CountingConnection.commands += 1
        return super().run(command, **kwargs)


@pytest.fixture
def setup(
    server: Server, tmp_path: Path, project_root: Path, secrets_env: dict[str, str]
) -> dict[str, Any]:
    templates = tmp_path / "templates"
    (templates / "t").mkdir(parents=True)
    (templates / "t/app.conf.j2").write_text(
        "host={{ container.hostname }}\npassword={{ secrets.redis_password }}\n"
    )
    (templates / "t/plain.conf.j2").write_text("port={{ inventory.redis.port }}\n")
    site = tmp_path / "site"
    steps = [
        {"name": "tools", "packages": ["bash", "coreutils"]},
        {"name": "config dir", "directory": {"path": f"{site}/etc", "mode": "0750"}},
        {
            "name": "secret config",
            "file": {
                "template": "t/app.conf.j2",
                "dest": f"{site}/etc/app.conf",
                "secret": True,
            },
            "notify": ["restart"],
        },
        {
            "name": "plain config",
            "file": {"template": "t/plain.conf.j2", "dest": f"{site}/etc/plain.conf"},
        },
        {
            "name": "gateway only",
            "file": {
                "template": "t/plain.conf.j2",
                "dest": f"{site}/etc/gateway.conf",
            },
            "when": "'api-gateway' in services",
        },
        {
            "name": "made once",
            "command": {"run": f"touch {site}/made", "creates": f"{site}/made"},
        },
        {
            "name": "counted once",
            "command": {
                "run": f"echo x >> {site}/count",
                "unless": f"grep -q x {site}/count",
            },
        },
    ]
    playbooks = {
        "base": Playbook.model_validate({"role": "base", "steps": []}),
        "redis": Playbook.model_validate(
            {
                "role": "redis",
                "steps": steps,
                "handlers": {
                    "restart": {
                        "name": "restart",
                        "command": {"run": f"echo restarted >> {site}/restarts"},
                    }
                },
            }
        ),
    }
    loaded = load_inventory(project_root / "inventory/mvp.yml")
    renderer = Renderer(templates, loaded, resolve_secrets(loaded))
    target = Target(
        "psa-redis", server.address, "root", server.client_key, port=server.port
    )
    return {
        "site": site,
        "templates": templates,
        "renderer": renderer,
        "playbooks": playbooks,
        "container": loaded.inventory.find("psa-redis"),
        "connection": lambda: CountingConnection(
            target, KnownHosts(tmp_path / "known_hosts"), trust_new=True
        ),
    }


def _run(setup: dict[str, Any], dry_run: bool = False) -> dict[str, tuple[str, str]]:
    with setup["connection"]() as connection:
        report = HostRun(
            connection,
            setup["container"],
            setup["renderer"],
            setup["playbooks"],
            pending_dir=str(setup["site"] / "pending"),
            dry_run=dry_run,
        ).run()
    assert report.host == "psa-redis"
    return {o.step: (o.status, o.detail) for o in report.outcomes}


def test_first_run_changes_then_second_run_changes_nothing(
    setup: dict[str, Any], secrets_env: dict[str, str]
) -> None:
    site: Path = setup["site"]
    first = _run(setup)
    assert first["tools"][0] == OK
    assert {k: v[0] for k, v in first.items()} == {
        "tools": OK,
        "config dir": CHANGED,
        "secret config": CHANGED,
        "plain config": CHANGED,
        "made once": CHANGED,
        "counted once": CHANGED,
        "restart": CHANGED,
    }
    secret = site / "etc/app.conf"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secrets_env["PSA_REDIS_PASSWORD"] in secret.read_text()
    assert stat.S_IMODE((site / "etc").stat().st_mode) == 0o750
    assert (site / "restarts").read_text() == "restarted\n"
    assert not (site / "etc/gateway.conf").exists()

    CountingConnection.commands = 0
    second = _run(setup)
    assert {v[0] for v in second.values()} == {OK}
    assert "restart" not in second
    assert CountingConnection.commands == 1, "a converged host costs one command"
    assert (site / "count").read_text() == "x\n"
    assert (site / "restarts").read_text() == "restarted\n"


def test_drift_is_repaired_and_notifies(setup: dict[str, Any]) -> None:
    site: Path = setup["site"]
    _run(setup)
    (site / "etc/app.conf").chmod(0o644)
    (site / "etc/plain.conf").write_text("port=1\n")
    again = _run(setup)
    assert again["secret config"] == (
        CHANGED,
        f"set root:root 0600 {site}/etc/app.conf",
    )
    assert again["plain config"] == (CHANGED, f"update content {site}/etc/plain.conf")
    assert again["restart"][0] == CHANGED
    assert stat.S_IMODE((site / "etc/app.conf").stat().st_mode) == 0o600
    assert (site / "etc/plain.conf").read_text() == "port=6379\n"


def test_dry_run_shows_diffs_and_changes_nothing(
    setup: dict[str, Any], secrets_env: dict[str, str]
) -> None:
    site: Path = setup["site"]
    _run(setup)
    (setup["templates"] / "t/plain.conf.j2").write_text("port={{ 1 + 1 }}\n")
    (setup["templates"] / "t/app.conf.j2").write_text(
        "changed={{ secrets.redis_password }}\n"
    )
    (site / "made").unlink()
    with setup["connection"]() as connection:
        report = HostRun(
            connection,
            setup["container"],
            setup["renderer"],
            setup["playbooks"],
            pending_dir=str(setup["site"] / "pending"),
            dry_run=True,
        ).run()
    outcomes = {o.step: o for o in report.outcomes}
    assert outcomes["plain config"].status == CHANGED
    assert outcomes["plain config"].diff is not None
    assert "-port=6379\n+port=2\n" in outcomes["plain config"].diff
    assert outcomes["secret config"].diff == "(holds secrets: content not shown)"
    assert outcomes["made once"].detail == "would run"
    assert outcomes["restart"].detail.startswith("would run: ")
    for outcome in report.outcomes:
        assert (
            secrets_env["PSA_REDIS_PASSWORD"]
            not in (outcome.diff or "") + outcome.detail
        )
    assert (site / "etc/plain.conf").read_text() == "port=6379\n"
    assert not (site / "made").exists()
    assert (site / "restarts").read_text() == "restarted\n"


def test_missing_package_is_reported_by_dry_run(setup: dict[str, Any]) -> None:
    playbook = setup["playbooks"]["redis"]
    setup["playbooks"]["redis"] = Playbook.model_validate(
        {
            "role": "redis",
            "steps": [{"name": "absent", "packages": ["bash", "psa-no-such-package"]}],
        }
    )
    assert _run(setup, dry_run=True)["absent"] == (
        CHANGED,
        "would install psa-no-such-package",
    )
    setup["playbooks"]["redis"] = playbook


def test_failed_step_stops_the_host_with_a_clear_message(setup: dict[str, Any]) -> None:
    setup["playbooks"]["redis"] = Playbook.model_validate(
        {
            "role": "redis",
            "steps": [
                {"name": "breaks", "command": {"run": "echo no disk >&2; exit 7"}},
                {"name": "after", "command": {"run": "true"}},
            ],
        }
    )
    with setup["connection"]() as connection:
        report = HostRun(
            connection,
            setup["container"],
            setup["renderer"],
            setup["playbooks"],
            pending_dir=str(setup["site"] / "pending"),
        ).run()
    assert [o.step for o in report.outcomes] == ["breaks"]
    assert report.outcomes[0].status == FAILED
    assert report.error is not None
    assert report.error.startswith(
        "[psa-redis] step 'breaks': command failed with exit code 7: echo no disk"
    )
    assert "no disk" in report.error


def test_verify_checks_what_the_steps_made(setup: dict[str, Any]) -> None:
    from psa_infra.verify import FAIL, PASS, HostChecks

    class StepChecksOnly(HostChecks):
        """The checks derived from playbook steps, without the role's daemon."""

        def _redis(self) -> Any:
            return iter(())

    site: Path = setup["site"]
    _run(setup)

    def verify() -> dict[str, tuple[str, str]]:
        renderer = setup["renderer"]
        with setup["connection"]() as connection:
            checks = StepChecksOnly(
                connection,
                setup["container"],
                renderer.inventory,
                renderer,
                setup["playbooks"],
                renderer.secrets,
            ).run()
        return {c.name: (c.status, c.detail) for c in checks}

    first = verify()
    assert first == {
        "package bash": (PASS, "installed"),
        "package coreutils": (PASS, "installed"),
        f"directory {site}/etc": (PASS, "root:root 0750"),
        f"file {site}/etc/app.conf": (PASS, "root:root 0600, content as rendered"),
        f"file {site}/etc/plain.conf": (PASS, "root:root 0644, content as rendered"),
    }
    (site / "etc/plain.conf").write_text("tampered\n")
    (site / "etc/app.conf").chmod(0o640)
    second = verify()
    assert second[f"file {site}/etc/plain.conf"] == (
        FAIL,
        "content differs from the rendered template",
    )
    assert second[f"file {site}/etc/app.conf"] == (
        FAIL,
        "root:root 0640, want root:root 0600",
    )


def test_a_handler_lost_to_a_failure_runs_on_the_next_run(
    setup: dict[str, Any],
) -> None:
    site: Path = setup["site"]
    steps = setup["playbooks"]["redis"].model_dump(exclude_none=True)
    stop = {"name": "stops", "command": {"run": f"test -e {site}/go"}}
    steps["steps"].append(stop)
    setup["playbooks"]["redis"] = Playbook.model_validate(steps)
    first = _run(setup)
    assert first["secret config"][0] == CHANGED
    assert first["stops"][0] == FAILED
    assert "restart" not in first
    assert not (site / "restarts").exists()
    (site / "go").touch()
    second = _run(setup)
    assert second["secret config"][0] == OK
    assert second["restart"][0] == CHANGED, "the pending handler still runs"
    assert (site / "restarts").read_text() == "restarted\n"
    third = _run(setup)
    assert "restart" not in third


def test_the_data_gate_is_passed_once_before_its_step(setup: dict[str, Any]) -> None:
    from psa_infra.errors import SSHError

    site: Path = setup["site"]
    setup["playbooks"]["redis"] = Playbook.model_validate(
        {
            "role": "redis",
            "steps": [
                {"name": "early", "command": {"run": f"touch {site}/early"}},
                {
                    "name": "needs data",
                    "wait_for_data": True,
                    "command": {"run": f"touch {site}/late"},
                },
                {"name": "after", "command": {"run": "true"}},
            ],
        }
    )
    calls: list[str] = []

    def run_with(gate: Any) -> Any:
        with setup["connection"]() as connection:
            run = HostRun(
                connection,
                setup["container"],
                setup["renderer"],
                setup["playbooks"],
                pending_dir=str(site / "pending"),
            )
            run.gate = gate
            return run.run()

    def closed() -> None:
        calls.append("closed")
        raise SSHError("[psa-app] not continued: the data services it needs failed")

    site.mkdir(exist_ok=True)
    report = run_with(closed)
    assert [(o.step, o.status) for o in report.outcomes] == [
        ("early", CHANGED),
        ("needs data", FAILED),
    ]
    assert (site / "early").exists() and not (site / "late").exists()
    assert report.error == "[psa-app] not continued: the data services it needs failed"
    report = run_with(lambda: calls.append("open"))
    assert calls == ["closed", "open"]
    assert [o.status for o in report.outcomes] == [CHANGED, CHANGED, CHANGED]
    assert (site / "late").exists()
