"""The command line: exit codes, stderr of each error class, plans and render."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from psa_infra import cli as cli_module
from psa_infra.plan import PHASES

Run = Callable[..., Any]


@pytest.fixture
def project(project_root: Path, tmp_path: Path) -> Path:
    """A copy of the project's site data that a test may change."""
    copy = tmp_path / "site"
    for folder in ("inventory", "templates", "playbooks"):
        shutil.copytree(project_root / folder, copy / folder)
    return copy


def _commands() -> list[str]:
    import typer.main

    group = typer.main.get_command(cli_module.app)
    names = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        names.extend(f"{name} {s}" for s in sub) if sub else names.append(name)
    return names


def test_top_level_help_has_an_example(cli: Run) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    assert "Example: psa-infra" in result.stdout


@pytest.mark.parametrize("command", _commands())
def test_every_command_help_has_an_example(cli: Run, command: str) -> None:
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0
    example = result.stdout.split("Example:", 1)[-1]
    assert "Example:" in result.stdout and "psa-infra " in example


def test_shim_runs_from_a_checkout(project_root: Path) -> None:
    done = subprocess.run(
        [sys.executable, "cli.py", "validate", "inventory/mvp.yml"],
        cwd=project_root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("inventory/mvp.yml: valid")


def test_offline_plan_text(cli: Run) -> None:
    result = cli("plan", "--offline")
    assert result.exit_code == 0
    assert result.stderr == ""
    assert "Plan for psa-mvp (inventory/mvp.yml, offline)" in result.stdout
    assert "PostgreSQL connections: 18 PM2 instances x pool 20 = 360" in result.stdout
    assert "Plan: 5 to create, " in result.stdout
    assert (
        "+ create container 150 on pve (8 cores, 16384 MiB, 100 GiB)" in result.stdout
    )
    assert (
        "net0 = name=eth0,bridge=vmbr20,ip=10.0.20.50/24,gw=10.0.20.1" in result.stdout
    )


def test_offline_plan_detailed_exitcode(cli: Run) -> None:
    assert cli("plan", "--offline", "--detailed-exitcode").exit_code == 2


def test_offline_plan_json_order_and_schema(cli: Run) -> None:
    result = cli("plan", "--offline", "--json", "inventory/production.yml")
    assert result.exit_code == 0
    plan = json.loads(result.stdout)
    assert plan["format_version"] == 1
    assert plan["mode"] == "offline"
    assert plan["changes"] is True
    assert plan["facts"]["connection_budget"]["needed"] == 550
    actions = plan["actions"]
    assert {a["kind"] for a in actions} == {"create", "file", "step"}
    assert plan["summary"]["create"] == 12
    phases = [PHASES.index(a["phase"]) for a in actions]
    assert phases == sorted(phases), "containers, then data services, then the app"
    app_hosts = [a["host"] for a in actions if a["phase"] == "app"]
    assert set(app_hosts) == {
        f"psa-{n}"
        for n in (
            "auth",
            "api-gateway",
            "crm",
            "tickets",
            "billing",
            "projects",
            "assets",
            "reports",
        )
    }
    created = [a for a in actions if a["kind"] == "create"]
    auth = next(a for a in created if a["host"] == "psa-auth")
    assert auth["vmid"] == 121
    assert auth["details"]["params"]["net0"].startswith(
        "name=eth0,bridge=vmbr20,ip=10.0.20.51/24,gw=10.0.20.1"
    )
    for action in actions:
        assert set(action) == {"kind", "phase", "host", "vmid", "summary", "details"}


@pytest.mark.parametrize("output", [[], ["--json"], ["--format", "markdown"]])
def test_plans_never_show_secrets(
    cli: Run, secrets_env: dict[str, str], output: list[str]
) -> None:
    result = cli("plan", "--offline", *output)
    assert result.exit_code == 0
    for value in secrets_env.values():
        assert value not in result.stdout + result.stderr


def test_offline_plan_markdown(cli: Run) -> None:
    result = cli("plan", "--offline", "--format", "markdown")
    assert result.exit_code == 0
    assert result.stdout.startswith("## psa-infra plan: psa-mvp\n")
    assert "| `+` | 150 | psa-app | create container 150" in result.stdout
    assert "<details><summary>psa-app:" in result.stdout


def _baseline(cli: Run, root: Path, tmp_path: Path) -> Path:
    base = tmp_path / "base.json"
    result = cli("--root", str(root), "plan", "--offline", "--json")
    assert result.exit_code == 0
    base.write_text(result.stdout)
    return base


def test_baseline_without_change_is_empty(
    cli: Run, project: Path, tmp_path: Path
) -> None:
    base = _baseline(cli, project, tmp_path)
    result = cli(
        "--root",
        str(project),
        "plan",
        "--offline",
        "--baseline",
        str(base),
        "--detailed-exitcode",
    )
    assert result.exit_code == 0
    assert "No changes" in result.stdout


def test_baseline_shows_an_update_in_place(
    cli: Run, project: Path, tmp_path: Path
) -> None:
    base = _baseline(cli, project, tmp_path)
    inventory = project / "inventory/mvp.yml"
    inventory.write_text(
        inventory.read_text().replace(
            "    memory: 4G\n    disk: 10G", "    memory: 6G\n    disk: 10G"
        )
    )
    result = cli(
        "--root",
        str(project),
        "plan",
        "--offline",
        "--baseline",
        str(base),
        "--json",
        "--detailed-exitcode",
    )
    assert result.exit_code == 2
    plan = json.loads(result.stdout)
    kinds = [(a["kind"], a["host"]) for a in plan["actions"]]
    assert ("update", "psa-redis") in kinds
    update = next(a for a in plan["actions"] if a["kind"] == "update")
    assert update["details"]["changes"]["memory"] == {"old": 4096, "new": 6144}
    # Redis sizes maxmemory from the container's memory: its config changes too.
    assert ("file", "psa-redis") in kinds
    assert all(host == "psa-redis" for _, host in kinds)


def test_baseline_shows_a_replacement(cli: Run, project: Path, tmp_path: Path) -> None:
    base = _baseline(cli, project, tmp_path)
    inventory = project / "inventory/mvp.yml"
    inventory.write_text(inventory.read_text().replace("disk: 500G", "disk: 400G"))
    result = cli("--root", str(project), "plan", "--offline", "--baseline", str(base))
    assert result.exit_code == 0
    assert (
        "replace container 100: root disk shrinks from 500 to 400 GiB" in result.stdout
    )


def test_baseline_must_be_a_plan(cli: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = cli("plan", "--offline", "--baseline", str(bad))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"psa-infra: error: {bad} line 1: not JSON")
    bad.write_text('{"format_version": 9}')
    result = cli("plan", "--offline", "--baseline", str(bad))
    assert result.exit_code == 1
    assert "is not an offline plan in format 1" in result.stderr


def test_render_writes_every_host(
    cli: Run, project: Path, tmp_path: Path, secrets_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    result = cli("--root", str(project), "render", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    hosts = sorted(p.name for p in out.iterdir())
    assert hosts == sorted(
        ["psa-db-master", "psa-redis", "psa-rabbitmq", "psa-elasticsearch", "psa-app"]
    )
    params = json.loads((out / "psa-app/proxmox-create.json").read_text())
    assert params["hostname"] == "psa-app"
    env = out / "psa-app/opt/psa-platform/.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert secrets_env["PSA_POSTGRES_PASSWORD"] in env.read_text()
    for path in out.rglob("*"):
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            text = path.read_text()
            for value in secrets_env.values():
                assert value not in text, (
                    f"{path} holds a secret but is readable by others"
                )
    for value in secrets_env.values():
        assert value not in result.stdout + result.stderr


def test_render_is_deterministic(
    cli: Run, project: Path, tmp_path: Path, secrets_env: dict[str, str]
) -> None:
    trees = []
    for name in ("one", "two"):
        out = tmp_path / name
        assert cli("--root", str(project), "render", "--out", str(out)).exit_code == 0
        trees.append(
            {
                str(p.relative_to(out)): p.read_bytes()
                for p in out.rglob("*")
                if p.is_file()
            }
        )
    assert trees[0] == trees[1]


def test_render_without_secrets_names_the_variable(
    cli: Run, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "PSA_POSTGRES_PASSWORD",
        "PSA_REDIS_PASSWORD",
        "PSA_RABBITMQ_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    result = cli("--root", str(project), "render", "--out", str(tmp_path / "out"))
    assert result.exit_code == 3
    assert result.stderr == (
        "psa-infra: error: inventory/mvp.yml line 42: secret 'postgres_password' needs "
        "environment variable PSA_POSTGRES_PASSWORD, which is not set\n"
        "hint: export PSA_POSTGRES_PASSWORD=... (or point the secret at a file)\n"
    )
    assert not (tmp_path / "out").exists()


def test_template_error_names_template_and_line(cli: Run, project: Path) -> None:
    template = project / "templates/lxc/create.yml.j2"
    lines = template.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("cores:"))
    lines[index] = "cores: {{ container.coress }}"
    template.write_text("\n".join(lines) + "\n")
    result = cli("--root", str(project), "plan", "--offline")
    assert result.exit_code == 4
    first = result.stderr.splitlines()[0]
    assert first.startswith(
        f"psa-infra: error: template lxc/create.yml.j2 line {index + 1}: "
    )
    assert "coress" in first
    assert f">  {index + 1:3} | cores: {{{{ container.coress }}}}" in result.stderr
    assert "Traceback" not in result.stderr


def test_template_syntax_error(cli: Run, project: Path) -> None:
    template = project / "templates/lxc/create.yml.j2"
    template.write_text(template.read_text() + "{% if %}\n")
    result = cli("--root", str(project), "plan", "--offline")
    assert result.exit_code == 4
    assert "template lxc/create.yml.j2 line " in result.stderr


def test_not_a_project(
    cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PSA_INFRA_ROOT", raising=False)
    result = cli("validate")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "psa-infra: error: no psa-infra project at or above"
    )
    assert "hint: run from inside the project" in result.stderr


def test_root_from_environment(
    cli: Run, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PSA_INFRA_ROOT", str(project))
    assert cli("validate").exit_code == 0


def test_usage_error_exits_2(cli: Run) -> None:
    result = cli("plan", "--format", "yaml")
    assert result.exit_code == 2
    assert "yaml" in result.stderr


def test_unexpected_error_prints_one_line_and_keeps_the_trace(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psa_infra.plan

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(psa_infra.plan, "offline_plan", broken)
    result = cli("plan", "--offline")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0].startswith("psa-infra: internal error: RuntimeError at ")
    trace = Path(lines[0].rsplit(" ", 1)[-1])
    assert "RuntimeError: boom" in trace.read_text()
    trace.unlink()
    assert "Traceback" not in result.stderr


def test_overrides_apply_and_never_echo_a_secret(cli: Run) -> None:
    result = cli("--set", "packages.nodejs=debian", "plan", "--offline")
    assert result.exit_code == 0
    assert "npm from the npm registry" in result.stdout
    result = cli("--set", "packages.nodejs=node22", "validate", "inventory/mvp.yml")
    assert result.exit_code == 3
    assert result.stderr.startswith(
        "psa-infra: error: inventory/mvp.yml (--set packages.nodejs=node22): "
        "packages.nodejs: must be one of"
    )
    for given in ("secrets.postgres_password=hunter2", "secrets.pw hunter2"):
        result = cli("--set", given, "validate", "inventory/mvp.yml")
        assert result.exit_code == 3
        assert "hunter2" not in result.stdout + result.stderr
