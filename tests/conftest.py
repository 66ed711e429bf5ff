"""Shared fixtures: the project root and a CLI runner that captures streams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from psa_infra.cli import run

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    """What one CLI run returned and printed."""

    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def project_root() -> Path:
    """The repository, which is itself a psa-infra project."""
    return ROOT


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``psa-infra ARGS`` in-process and return its exit code and output."""

    def invoke(*args: str) -> Result:
        capsys.readouterr()
        code = run(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return invoke


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Test values for the inventory's secret references."""
    values = {
        "PSA_POSTGRES_PASSWORD": "pg-Secret-1",
        "PSA_REDIS_PASSWORD": "redis-Secret-2",
        "PSA_RABBITMQ_PASSWORD": "mq-Secret/3",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


# --------------------------------------------------------------------------
# The fake Proxmox API (fakepve) set up as the MVP inventory expects it.

MVP_TEMPLATE = "debian-12-standard_12.0-1_amd64.tar.zst"
TOKEN_ID = "psa@pve!provision"
TOKEN_SECRET = "token-Secret-4"  # noqa: S105 - a test value


@pytest.fixture
def bridges(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[str]]:
    """Bridges each fake node lists, beside its sample vmbr0 (node -> names).

    fakepve answers GET /nodes/{node}/network with a fixed sample; this
    widens the sample per node, so a test can add or remove a bridge.
    """
    from fakepve import shapes

    per_node: dict[str, set[str]] = {}

    def networks(ctx: dict[str, object]) -> list[dict[str, object]]:
        sample = shapes.networks(ctx)
        extra = [
            dict(sample[0], iface=name, bridge_ports="", address=None, cidr=None)
            for name in sorted(per_node.get(str(ctx.get("node")), set()))
        ]
        return sample + [{k: v for k, v in e.items() if v is not None} for e in extra]

    monkeypatch.setitem(
        shapes.FIXUPS, "/nodes/{node}/network", [shapes.replace(networks)]
    )
    return per_node


@pytest.fixture
def pve(
    fakepve: object,
    fakepve_cafile: str,
    bridges: dict[str, set[str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> object:
    """A fake one-node cluster 'pve' ready for inventory/mvp.yml.

    The node has storages local (with the template) and local-lvm, and the
    bridges vmbr20 and vmbr30; the environment points psa-infra at it with
    an API token and the fake's CA.
    """
    pve = fakepve
    pve.nodes = {"pve": {"online": True}}  # type: ignore[attr-defined]
    pve.apitokens[TOKEN_ID] = TOKEN_SECRET  # type: ignore[attr-defined]
    pve.store_file("local", MVP_TEMPLATE, 180 * 1024**2, content="vztmpl")  # type: ignore[attr-defined]
    bridges["pve"] = {"vmbr20", "vmbr30"}
    for name in ("PROXMOX_HOST", "PROXMOX_USER", "PROXMOX_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PROXMOX_URL", pve.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("PROXMOX_TOKEN_ID", TOKEN_ID)
    monkeypatch.setenv("PROXMOX_TOKEN_SECRET", TOKEN_SECRET)
    monkeypatch.setenv("PROXMOX_CA_FILE", fakepve_cafile)
    # The SSH key the inventory names is read from the home folder.
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAATEST psa@test\n")
    monkeypatch.setenv("HOME", str(home))
    return pve


@pytest.fixture
def api_responses(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[list[tuple[str, str, int]]]:
    """Every (method, url, status) psa-infra's HTTP layer received.

    Fails the test if the API answered any request with 400: psa-infra must
    never send a request the API's schema rejects.
    """
    import requests.adapters

    seen: list[tuple[str, str, int]] = []
    send = requests.adapters.HTTPAdapter.send

    def recording(self: object, request: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        response = send(self, request, *args, **kwargs)  # type: ignore[arg-type]
        seen.append((request.method, request.url, response.status_code))  # type: ignore[attr-defined]
        return response

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", recording)
    yield seen
    bad = [entry for entry in seen if entry[2] == 400]
    assert not bad, f"the API answered 400 to: {bad}"


@pytest.fixture
def pve_project(tmp_path: Path) -> Path:
    """A copy of the project's MVP inventory and container template to edit."""
    import shutil

    root = tmp_path / "project"
    (root / "inventory").mkdir(parents=True)
    shutil.copy(ROOT / "inventory" / "mvp.yml", root / "inventory" / "mvp.yml")
    shutil.copytree(ROOT / "templates" / "lxc", root / "templates" / "lxc")
    (root / "playbooks").mkdir()
    return root


@pytest.fixture
def writes(pve: object) -> Callable[[], list[tuple[str, str, str]]]:
    """The requests fakepve saw that could change something, logins aside."""

    def requests() -> list[tuple[str, str, str]]:
        return [
            (method, path.removeprefix("/api2/json"), body.decode())
            for method, path, body in pve.requests  # type: ignore[attr-defined]
            if method != "GET" and not path.endswith("/access/ticket")
        ]

    return requests
