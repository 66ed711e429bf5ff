"""``psa-infra provision --containers-only`` and the live plan against fakepve."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests.adapters

pytestmark = [
    pytest.mark.usefixtures("api_responses"),
    # fakepve's loop stops with some kept-alive server connections still open;
    # the garbage collector warns about those sockets of the fake at random.
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
]

Run = Callable[..., Any]
Writes = Callable[[], list[tuple[str, str, str]]]
MVP = {
    100: "psa-db-master",
    110: "psa-redis",
    120: "psa-rabbitmq",
    130: "psa-elasticsearch",
    150: "psa-app",
}


def provision(cli: Run, root: Path, *args: str) -> Any:
    return cli("--root", str(root), "provision", "--containers-only", "--yes", *args)


def creates(writes: Writes) -> list[int]:
    return sorted(
        int(parse_qs(body)["vmid"][0])
        for m, p, body in writes()
        if (m, p) == ("POST", "/nodes/pve/lxc")
    )


def edit(root: Path, old: str, new: str) -> None:
    path = root / "inventory" / "mvp.yml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_fresh_cluster_gets_every_container_running(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    result = provision(cli, project_root)
    assert result.exit_code == 0, result.stderr
    assert {ct.vmid: ct.name for ct in pve.cts} == MVP
    assert all(ct.status == "running" and ct.node == "pve" for ct in pve.cts)
    db = pve.ct(100).config
    assert db["memory"] == 32768 and db["cores"] == 8 and db["swap"] == 512
    assert db["rootfs"] == "local-lvm:vm-100-disk-0,size=500G"
    assert "bridge=vmbr30" in db["net0"] and "ip=10.0.30.10/24" in db["net0"]
    assert db["tags"] == "postgresql;psa" and db["onboot"] == 1
    assert db["nameserver"] == "10.0.20.1" and db["searchdomain"] == "psa.internal"
    assert db["features"] == "nesting=1" and db["description"] == "PostgreSQL 15"
    sent = next(parse_qs(b) for m, p, b in writes() if "vmid=100" in b)
    assert sent["ssh-public-keys"] == ["ssh-ed25519 AAAATEST psa@test"]
    assert creates(writes) == sorted(MVP)
    for vmid, host in MVP.items():
        assert f"│ {vmid}" in result.stdout and host in result.stdout
    assert "created" in result.stdout


def test_rerun_on_a_converged_cluster_writes_nothing(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    assert provision(cli, project_root).exit_code == 0
    before = len(writes())
    again = provision(cli, project_root, "--json")
    assert again.exit_code == 0, again.stderr
    assert len(writes()) == before
    assert json.loads(again.stdout) == {
        "changes": False,
        "results": [],
        "unmanaged": [],
    }
    plan = cli(
        "--root", str(project_root), "plan", "--containers-only", "--detailed-exitcode"
    )
    assert plan.exit_code == 0
    assert "No changes: the cluster matches the inventory." in plan.stdout


def test_drift_is_updated_in_place_sending_only_changed_keys(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    assert provision(cli, project_root).exit_code == 0
    db = pve.ct(100)
    mac = db.config["net0"].split("hwaddr=")[1].split(",")[0]
    db.config["memory"] = 2048
    db.config["net0"] = db.config["net0"].replace(
        "ip=10.0.30.10/24", "ip=10.0.30.99/24"
    )
    db.config["tags"] = "postgresql;psa;stray"
    plan = cli(
        "--root",
        str(project_root),
        "plan",
        "--containers-only",
        "--json",
        "--detailed-exitcode",
    )
    assert plan.exit_code == 2
    (action,) = json.loads(plan.stdout)["actions"]
    assert action["kind"] == "update" and action["host"] == "psa-db-master"
    assert action["details"]["changes"]["memory"] == {"old": 2048, "new": 32768}
    assert set(action["details"]["changes"]) == {"memory", "net0", "tags"}

    before = len(writes())
    result = provision(cli, project_root)
    assert result.exit_code == 0, result.stderr
    ((method, path, body),) = writes()[before:]
    assert (method, path) == ("PUT", "/nodes/pve/lxc/100/config")
    sent = parse_qs(body)
    assert set(sent) == {"memory", "net0", "tags"}
    assert f"hwaddr={mac}" in sent["net0"][0]
    assert db.config["memory"] == 32768 and "ip=10.0.30.10/24" in db.config["net0"]
    assert mac in db.config["net0"]


def test_larger_disk_grows_and_stopped_container_starts(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    assert provision(cli, project_root).exit_code == 0
    redis = pve.ct(110)
    redis.config["rootfs"] = "local-lvm:vm-110-disk-0,size=8G"
    redis.status = "stopped"
    before = len(writes())
    assert provision(cli, project_root).exit_code == 0
    assert [(m, p) for m, p, _ in writes()[before:]] == [
        ("PUT", "/nodes/pve/lxc/110/resize"),
        ("POST", "/nodes/pve/lxc/110/status/start"),
    ]
    assert redis.config["rootfs"].endswith("size=10G") and redis.status == "running"


def test_change_that_needs_replace_is_refused_then_done_with_replace(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    assert provision(cli, project_root).exit_code == 0
    pve.ct(110).config["rootfs"] = "local-lvm:vm-110-disk-0,size=50G"
    before = len(writes())
    refused = provision(cli, project_root)
    assert refused.exit_code == 7
    assert (
        "psa-redis (110) cannot change in place: disk: 50 GiB -> 10 GiB"
        in refused.stderr
    )
    assert "re-run with --replace psa-redis" in refused.stderr
    assert "nothing was changed" in refused.stderr
    assert len(writes()) == before

    replaced = provision(cli, project_root, "--replace", "psa-redis")
    assert replaced.exit_code == 0, replaced.stderr
    assert [(m, p) for m, p, _ in writes()[before:]] == [
        ("POST", "/nodes/pve/lxc/110/status/stop"),
        ("DELETE", "/nodes/pve/lxc/110"),
        ("POST", "/nodes/pve/lxc"),
        ("POST", "/nodes/pve/lxc/110/status/start"),
    ]
    assert pve.ct(110).config["rootfs"].endswith("size=10G")


def test_task_ending_in_error_shows_its_log_and_keeps_the_others(
    pve: Any, cli: Run, project_root: Path
) -> None:
    pve.fail(
        "POST",
        "/nodes/pve/lxc/150/status/start",
        error="quotas_not_supported_unprivileged_containers",
        times=1,
    )
    result = provision(cli, project_root)
    assert result.exit_code == 5
    assert "1 of 5 containers failed: psa-app: start psa-app (150): task vzstart" in (
        result.stderr
    )
    assert "TASK ERROR: Quotas are not supported by unprivileged containers." in (
        result.stderr
    )
    assert sum(ct.status == "running" for ct in pve.cts) == 4
    assert "failed" in result.stdout
    # The next run only starts what is left.
    assert provision(cli, project_root).exit_code == 0
    assert all(ct.status == "running" for ct in pve.cts)


def test_burst_of_5xx_is_ridden_out_without_duplicates(
    pve: Any, cli: Run, project_root: Path, api_responses: list[Any]
) -> None:
    pve.fail("GET", "/cluster/resources", 502, "Bad Gateway", times=2)
    pve.fail("POST", "/nodes/pve/lxc", 503, "<html>busy</html>", html=True, times=3)
    pve.fail(
        "GET", "/nodes/{node}/tasks/{upid}/status", 504, "Gateway Timeout", times=4
    )
    result = provision(cli, project_root)
    assert result.exit_code == 0, result.stderr
    # The refused creates were sent again; each container was made once.
    accepted = [
        r for r in api_responses if r[0] == "POST" and r[1].endswith("/nodes/pve/lxc")
    ]
    assert [r[2] for r in accepted].count(200) == 5
    assert [r[2] for r in accepted].count(503) == 3
    assert {ct.vmid for ct in pve.cts} == set(MVP)


def test_dropped_connections_make_no_duplicate(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    pve.flaky_network(drop_rate=0.25, seed=11)
    result = provision(cli, project_root)
    assert result.exit_code == 0, result.stderr
    assert {ct.vmid for ct in pve.cts} == set(MVP)
    assert creates(writes) == sorted(MVP)


def test_create_whose_answer_is_lost_is_resolved_not_sent_again(
    pve: Any,
    cli: Run,
    project_root: Path,
    writes: Writes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send = requests.adapters.HTTPAdapter.send
    lost: list[str] = []

    def lose_answer(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = send(self, request, *args, **kwargs)
        if request.method == "POST" and request.url.endswith("/lxc") and not lost:
            lost.append(request.body)
            raise requests.exceptions.ConnectionError("Connection reset by peer")
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", lose_answer)
    result = provision(cli, project_root, "--parallel", "1")
    assert result.exit_code == 0, result.stderr
    assert lost and creates(writes) == sorted(MVP)


def test_locked_container_that_needs_a_change_stops_preflight(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    assert provision(cli, project_root).exit_code == 0
    pve.snapshot_lock(120, "backup")
    # Locked but converged: nothing to do, nothing to complain about.
    assert provision(cli, project_root).exit_code == 0
    pve.ct(120).config["cores"] = 1
    before = len(writes())
    result = provision(cli, project_root)
    assert result.exit_code == 7
    assert "psa-rabbitmq (120) is locked (backup) and needs a change" in result.stderr
    assert len(writes()) == before


def test_offline_node_stops_preflight(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    pve.set_node_offline("pve")
    result = provision(cli, project_root)
    assert result.exit_code == 7
    assert "node pve (for psa-db-master, psa-redis" in result.stderr
    assert "is offline" in result.stderr
    assert writes() == []


def test_preflight_reports_every_problem_together(
    pve: Any,
    cli: Run,
    project_root: Path,
    writes: Writes,
    bridges: dict[str, set[str]],
) -> None:
    bridges["pve"] = {"vmbr20"}
    pve.storages["local"]["volumes"].clear()
    pve.store_file("local", "other-template.tar.zst", 1, content="vztmpl")
    pve.add_ct(130, "somebody-else", node="pve")
    result = provision(cli, project_root)
    assert result.exit_code == 7
    assert "preflight found 3 problems; nothing was changed" in result.stderr
    assert "vmid 130 is taken by container 'somebody-else'" in result.stderr
    assert (
        "bridge vmbr30 does not exist on node pve (for psa-db-master)" in result.stderr
    )
    assert (
        "template local:vztmpl/debian-12-standard_12.0-1_amd64.tar.zst is not on"
        in (result.stderr)
    )
    assert writes() == []


def test_inactive_or_missing_storage_stops_preflight(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    pve.storages["local"]["active"] = 0
    del pve.storages["local-lvm"]
    result = provision(cli, project_root)
    assert result.exit_code == 7
    assert "storage local-lvm does not exist on node pve (storages: local)" in (
        result.stderr
    )
    assert "storage local is not active on node pve" in result.stderr
    assert writes() == []


def test_missing_template_is_downloaded_when_the_inventory_says_from_where(
    pve: Any, cli: Run, pve_project: Path, writes: Writes
) -> None:
    pve.storages["local"]["volumes"].clear()
    pve.store_file("local", "other-template.tar.zst", 1, content="vztmpl")
    edit(
        pve_project,
        "  tag: psa\n",
        "  tag: psa\n  template_url: https://images.example/debian-12.tar.zst\n"
        f"  template_sha256: {'ab' * 32}\n",
    )
    result = provision(cli, pve_project)
    assert result.exit_code == 0, result.stderr
    (download,) = [w for w in writes() if w[1].endswith("/download-url")]
    sent = parse_qs(download[2])
    assert sent["url"] == ["https://images.example/debian-12.tar.zst"]
    assert sent["checksum-algorithm"] == ["sha256"]
    assert len(pve.cts) == 5


def test_two_node_cluster_moves_a_container_instead_of_recreating_it(
    pve: Any,
    cli: Run,
    pve_project: Path,
    writes: Writes,
    bridges: dict[str, set[str]],
) -> None:
    pve.add_node("pve2")
    bridges["pve2"] = {"vmbr20", "vmbr30"}
    assert provision(cli, pve_project).exit_code == 0
    edit(
        pve_project,
        "    role: redis\n    cores: 2\n",
        "    role: redis\n    node: pve2\n    cores: 3\n",
    )
    plan = cli("--root", str(pve_project), "plan", "--containers-only")
    assert "> move container 110 from pve to pve2" in plan.stdout
    assert "cores: 2 -> 3" in plan.stdout
    before = len(writes())
    result = provision(cli, pve_project)
    assert result.exit_code == 0, result.stderr
    moved = writes()[before:]
    assert [(m, p) for m, p, _ in moved] == [
        ("POST", "/nodes/pve/lxc/110/migrate"),
        ("PUT", "/nodes/pve2/lxc/110/config"),
    ]
    assert parse_qs(moved[0][2]) == {"target": ["pve2"], "restart": ["1"]}
    assert pve.ct(110).node == "pve2" and pve.ct(110).status == "running"
    assert str(pve.ct(110).config["cores"]) == "3"
    assert provision(cli, pve_project).exit_code == 0
    assert len(writes()) == before + 2


def test_password_auth(
    pve: Any, cli: Run, project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROXMOX_TOKEN_ID")
    monkeypatch.delenv("PROXMOX_TOKEN_SECRET")
    monkeypatch.setenv("PROXMOX_USER", "root@pam")
    monkeypatch.setenv("PROXMOX_PASSWORD", "secret")
    assert provision(cli, project_root).exit_code == 0
    assert len(pve.cts) == 5
    monkeypatch.setenv("PROXMOX_PASSWORD", "Wrong-Password")
    refused = provision(cli, project_root)
    assert refused.exit_code == 5
    assert "login as root@pam" in refused.stderr and "401" in refused.stderr
    assert "Wrong-Password" not in refused.stderr + refused.stdout


def test_tls_refused_without_the_ca_and_insecure_warns(
    pve: Any, cli: Run, project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROXMOX_CA_FILE")
    refused = provision(cli, project_root)
    assert refused.exit_code == 5
    assert "could not be verified" in refused.stderr
    assert "hint: give the CA that signed it with --ca-file" in refused.stderr
    assert "Traceback" not in refused.stderr
    insecure = provision(cli, project_root, "--insecure")
    assert insecure.exit_code == 0
    assert "warning: TLS verification is off (--insecure)" in insecure.stderr


def test_unmanaged_tagged_container_is_shown_and_left_alone(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    pve.add_ct(170, "psa-old", node="pve", config={"tags": "psa;redis"})
    plan = cli(
        "--root", str(project_root), "plan", "--containers-only", "--format", "markdown"
    )
    assert plan.exit_code == 0
    assert "| `?` | 170 | psa-old |" in plan.stdout
    result = provision(cli, project_root)
    assert result.exit_code == 0
    assert "psa-old: container 170 on pve carries tag 'psa'" in result.stderr
    assert all(p != "/nodes/pve/lxc/170" for _, p, _ in writes())


def test_only_limits_the_containers(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    result = provision(cli, project_root, "--only", "psa-redis", "--only", "150")
    assert result.exit_code == 0
    assert creates(writes) == [110, 150]
    again = provision(cli, project_root, "--only", "psa-db-master")
    assert again.exit_code == 0
    assert creates(writes) == [100, 110, 150]
    # The inventory's other containers carry the tag but are not strays.
    assert "not in the inventory" not in again.stderr


# ------------------------------------------------------------ CLI error paths


def test_full_provision_reads_secrets_before_any_request(
    pve: Any,
    cli: Run,
    project_root: Path,
    writes: Writes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PSA_REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("PSA_POSTGRES_PASSWORD", "x")
    result = cli("--root", str(project_root), "provision", "--yes")
    assert result.exit_code == 3
    assert result.stderr.startswith(
        "psa-infra: error: inventory/mvp.yml line 43: secret 'redis_password' needs "
        "environment variable PSA_REDIS_PASSWORD"
    )
    assert writes() == []


def test_provision_needs_confirmation_on_a_terminal(
    pve: Any, cli: Run, project_root: Path, writes: Writes
) -> None:
    result = cli("--root", str(project_root), "provision", "--containers-only")
    assert result.exit_code == 1
    assert "needs confirmation, but there is no terminal" in result.stderr
    assert "hint: review 'psa-infra plan', then re-run with --yes" in result.stderr
    assert writes() == []


def test_missing_connection_settings_are_an_error_before_any_request(
    cli: Run, project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PROXMOX_URL", "PROXMOX_HOST", "PROXMOX_TOKEN_ID", "PROXMOX_USER"):
        monkeypatch.delenv(name, raising=False)
    for args in (
        ("plan", "--containers-only"),
        ("provision", "--containers-only", "--yes"),
    ):
        result = cli("--root", str(project_root), *args)
        assert result.exit_code == 5
        assert "psa-infra: error: the Proxmox API address is not set" in result.stderr
        assert "hint: set PROXMOX_URL=https://HOST:8006" in result.stderr


def test_bad_inventory_never_reaches_the_api(
    pve: Any, cli: Run, pve_project: Path
) -> None:
    edit(pve_project, "vmid: 150", "vmid: 110")
    result = provision(cli, pve_project)
    assert result.exit_code == 3
    assert "vmid 110 is already used" in result.stderr
    unknown = provision(cli, pve_project.parent / "missing")
    assert unknown.exit_code == 1
    assert pve.requests == []


def test_unknown_only_name_never_reaches_the_api(
    pve: Any, cli: Run, project_root: Path
) -> None:
    result = provision(cli, project_root, "--only", "psa-nope")
    assert result.exit_code == 3
    assert "no container 'psa-nope'" in result.stderr
    assert pve.requests == []
