"""Render the project's inventories for tests: test secrets and helpers."""

from __future__ import annotations

import re
from pathlib import Path

from psa_infra.inventory import LoadedInventory, load_inventory
from psa_infra.playbooks import Playbook, load_playbooks
from psa_infra.render import RenderedFile, Renderer
from psa_infra.secrets import Secret, masked_secrets

ROOT = Path(__file__).resolve().parent.parent

# Each value carries characters that break an unquoted config line, a shell
# word, a URL or an SQL literal, so a missing escape shows up as a failure.
TEST_SECRETS = {
    "postgres_password": "pg p'w\"d\\/@x$1",
    "redis_password": 're"d is\\pw #1',
    "rabbitmq_password": "mq/p@ss:w%rd?&",
}


def load(name: str, root: Path = ROOT) -> LoadedInventory:
    """Load ``inventory/<name>.yml`` of the project at ``root``."""
    return load_inventory(root / "inventory" / f"{name}.yml", root=ROOT)


def load_text(text: str, tmp: Path) -> LoadedInventory:
    """Load an inventory written from ``text`` into ``tmp``."""
    path = tmp / "inventory.yml"
    path.write_text(text, encoding="utf-8")
    return load_inventory(path, root=ROOT)


def secrets(loaded: LoadedInventory, real: bool = True) -> dict[str, Secret]:
    """The test secrets, or the masks a plan uses when ``real`` is false."""
    if not real:
        return masked_secrets(loaded)
    return {name: Secret(name, value) for name, value in TEST_SECRETS.items()}


def playbooks(root: Path = ROOT) -> dict[str, Playbook]:
    """The project's playbooks."""
    return load_playbooks(root / "playbooks", Path("playbooks"))


def renderer(loaded: LoadedInventory, real: bool = True) -> Renderer:
    """A renderer of the project's templates over ``loaded``."""
    return Renderer(ROOT / "templates", loaded, secrets(loaded, real))


def render_all(
    loaded: LoadedInventory, reveal: bool = True, real: bool = True
) -> dict[tuple[str, str], RenderedFile]:
    """Every rendered file of every container, by (hostname, dest)."""
    books = playbooks()
    rendering = renderer(loaded, real)
    return {
        (f.host, f.dest): f
        for container in loaded.inventory.containers
        for f in rendering.files(container, books, reveal=reveal)
    }


def with_service_port(text: str, service: str, port: int) -> str:
    """Move one service of an inventory's text to another port."""
    changed, count = re.subn(
        rf"(\b{re.escape(service)}: \{{port: )\d+", rf"\g<1>{port}", text
    )
    assert count == 1, f"{service} is not placed once in the inventory"
    return changed
