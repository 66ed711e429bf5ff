"""Inventory loading and validation: good layouts, broken cases, units, secrets."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from psa_infra.checks import check_coexistence, connection_budget
from psa_infra.errors import InventoryError, SecretError
from psa_infra.inventory import Container, load_inventory
from psa_infra.secrets import MASK, Secret, read_secret, resolve_secrets
from psa_infra.yamlsrc import load_yaml

BROKEN = Path(__file__).parent / "cases" / "broken"
CASES = sorted(p.stem for p in (BROKEN / "inventory").glob("*.yml"))


def test_every_broken_case_has_an_expected_message() -> None:
    expected = sorted(p.stem for p in (BROKEN / "expected").glob("*.txt"))
    assert CASES == expected
    assert len(CASES) >= 25


@pytest.mark.parametrize("case", CASES)
def test_broken_inventory_gives_exact_message(
    case: str, cli: Callable[..., object]
) -> None:
    result = cli("--root", str(BROKEN), "validate", f"inventory/{case}.yml")
    expected = (BROKEN / "expected" / f"{case}.txt").read_text()
    assert result.exit_code == 3  # type: ignore[attr-defined]
    assert result.stderr == expected  # type: ignore[attr-defined]
    assert result.stdout == ""  # type: ignore[attr-defined]
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]


def test_mvp_matches_the_deployment_strategy(project_root: Path) -> None:
    inventory = load_inventory(project_root / "inventory/mvp.yml").inventory
    layout = {
        c.vmid: (c.hostname, c.role, c.cores, c.memory, c.disk, str(c.address))
        for c in inventory.containers
    }
    assert layout == {
        100: ("psa-db-master", "postgresql", 8, 32768, 500, "10.0.30.10"),
        110: ("psa-redis", "redis", 2, 4096, 10, "10.0.20.20"),
        120: ("psa-rabbitmq", "rabbitmq", 2, 4096, 20, "10.0.20.30"),
        130: ("psa-elasticsearch", "elasticsearch", 4, 16384, 200, "10.0.20.40"),
        150: ("psa-app", "app", 8, 16384, 100, "10.0.20.50"),
    }
    app = inventory.find("psa-app")
    assert {n: (s.port, s.instances) for n, s in app.services.items()} == {
        "api-gateway": (3000, 2),
        "auth": (3010, 2),
        "crm": (3020, 2),
        "tickets": (3030, 4),
        "billing": (3040, 2),
        "projects": (3050, 2),
        "assets": (3060, 2),
        "reports": (3070, 2),
    }
    assert connection_budget(inventory) == (18, 360, 410)
    assert inventory.postgresql.max_connections == 500


def test_production_places_each_service_alone(project_root: Path) -> None:
    inventory = load_inventory(project_root / "inventory/production.yml").inventory
    apps = inventory.by_role("app")
    assert all(len(c.services) == 1 for c in apps)
    instances = {n: s.instances for c in apps for n, s in c.services.items()}
    assert instances == {
        "api-gateway": 3,
        "auth": 3,
        "crm": 3,
        "tickets": 5,
        "billing": 3,
        "projects": 3,
        "assets": 2,
        "reports": 3,
    }
    auth = inventory.find("psa-auth")
    assert (auth.vmid, str(auth.address), auth.cores, auth.memory) == (
        121,
        "10.0.20.51",
        2,
        4096,
    )
    # 25 instances x 20 = 500: the strategy's max_connections of 500 is not enough.
    assert connection_budget(inventory) == (25, 500, 550)
    assert inventory.postgresql.max_connections >= 550


def test_layouts_can_share_the_cluster(project_root: Path) -> None:
    mvp = load_inventory(project_root / "inventory/mvp.yml")
    production = load_inventory(project_root / "inventory/production.yml")
    check_coexistence(mvp, production)
    check_coexistence(production, mvp)


def test_coexistence_catches_a_vmid_taken_by_the_other_layout(
    project_root: Path, tmp_path: Path
) -> None:
    text = (project_root / "inventory/production.yml").read_text()
    text = text.replace(
        "vmid: 125\n    hostname: psa-billing", "vmid: 150\n    hostname: psa-billing"
    )
    path = tmp_path / "production.yml"
    path.write_text(text)
    production = load_inventory(path)
    mvp = load_inventory(project_root / "inventory/mvp.yml")
    with pytest.raises(InventoryError) as caught:
        check_coexistence(production, mvp)
    assert "vmid 150 is psa-billing here but psa-app in" in caught.value.message


def test_validate_all_inventories_by_default(cli: Callable[..., object]) -> None:
    result = cli("validate")
    assert result.exit_code == 0  # type: ignore[attr-defined]
    assert result.stdout.splitlines() == [  # type: ignore[attr-defined]
        "inventory/mvp.yml: valid (5 containers, 8 services; PostgreSQL "
        "connections 410 of 500)",
        "inventory/production.yml: valid (12 containers, 8 services; PostgreSQL "
        "connections 550 of 700)",
    ]


@pytest.mark.parametrize(
    ("value", "mib"),
    [
        (4096, 4096),
        ("4G", 4096),
        ("4GiB", 4096),
        ("512M", 512),
        ("512 MB", 512),
        ("1T", 1048576),
    ],
)
def test_memory_sizes(value: object, mib: int) -> None:
    container = Container.model_validate(
        {
            "vmid": 150,
            "hostname": "x",
            "role": "redis",
            "cores": 1,
            "memory": value,
            "disk": 8,
            "bridge": "vmbr20",
            "address": "10.0.20.9",
        }
    )
    assert container.memory == mib


@pytest.mark.parametrize("value", ["4X", "-1", "0", "1.5G", "100K", True])
def test_bad_memory_sizes(value: object) -> None:
    with pytest.raises(ValueError):
        Container.model_validate(
            {
                "vmid": 150,
                "hostname": "x",
                "role": "redis",
                "cores": 1,
                "memory": value,
                "disk": 8,
                "bridge": "vmbr20",
                "address": "10.0.20.9",
            }
        )


def test_yaml_lines_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "x.yml"
    path.write_text("a:\n  b: 1\n  c:\n    - d: 2\n    - e: 3\n")
    document = load_yaml(path)
    assert document.line(("a", "b")) == 2
    assert document.line(("a", "c", 1, "e")) == 5
    assert document.line(("a", "c", 1, "missing")) == 5


def test_empty_inventory_file(tmp_path: Path) -> None:
    (tmp_path / "empty.yml").write_text("")
    with pytest.raises(InventoryError) as caught:
        load_inventory(tmp_path / "empty.yml")
    assert "required key is missing" in caught.value.message


def test_missing_inventory_file(cli: Callable[..., object]) -> None:
    result = cli("validate", "inventory/nope.yml")
    assert result.exit_code == 3  # type: ignore[attr-defined]
    assert "inventory/nope.yml: no such file" in result.stderr  # type: ignore[attr-defined]


def test_secret_from_environment(
    project_root: Path, secrets_env: dict[str, str]
) -> None:
    loaded = load_inventory(project_root / "inventory/mvp.yml")
    secrets = resolve_secrets(loaded)
    assert secrets["postgres_password"].reveal() == secrets_env["PSA_POSTGRES_PASSWORD"]
    assert str(secrets["postgres_password"]) == MASK
    assert secrets_env["PSA_POSTGRES_PASSWORD"] not in repr(secrets)


def test_secret_environment_missing(
    project_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PSA_REDIS_PASSWORD", raising=False)
    monkeypatch.setenv("PSA_POSTGRES_PASSWORD", "x")
    loaded = load_inventory(project_root / "inventory/mvp.yml")
    with pytest.raises(SecretError) as caught:
        resolve_secrets(loaded)
    assert (
        "secret 'redis_password' needs environment variable PSA_REDIS_PASSWORD"
        in str(caught.value)
    )
    assert "mvp.yml line 43: " in str(caught.value)
    assert (
        caught.value.hint
        == "export PSA_REDIS_PASSWORD=... (or point the secret at a file)"
    )


def test_secret_file_must_be_private(tmp_path: Path) -> None:
    from psa_infra.inventory import SecretRef

    path = tmp_path / "pw"
    path.write_text("s3cret\n")
    os.chmod(path, 0o644)
    ref = SecretRef(file=str(path))
    with pytest.raises(SecretError) as caught:
        read_secret("pw", ref, "here")
    assert caught.value.hint == f"chmod 600 {path}"
    os.chmod(path, 0o600)
    assert read_secret("pw", ref, "here").reveal() == "s3cret"


def test_secret_file_inside_project_is_refused(
    project_root: Path, tmp_path: Path
) -> None:
    text = (
        (project_root / "inventory/mvp.yml")
        .read_text()
        .replace("{env: PSA_REDIS_PASSWORD}", f"{{file: {project_root}/redis.txt}}")
    )
    path = tmp_path / "mvp.yml"
    path.write_text(text)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path, root=project_root)
    assert "must live outside the project" in caught.value.message


def test_secret_masks_itself() -> None:
    secret = Secret("x", "value")
    assert f"{secret}" == MASK
    assert "value" not in repr(secret)
