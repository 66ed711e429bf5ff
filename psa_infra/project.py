"""Find the project's folders: inventory, templates, playbooks and state.

The project root is the folder holding ``inventory/``. It is taken from
``--root``, else ``PSA_INFRA_ROOT``, else the nearest folder at or above the
current one that holds ``inventory/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import PsaInfraError

DEFAULT_INVENTORY = "inventory/mvp.yml"


@dataclass(frozen=True)
class Project:
    """The folders of one psa-infra project."""

    root: Path
    # KEY=VALUE assignments over every inventory loaded (--set).
    overrides: tuple[str, ...] = ()

    @property
    def known_hosts(self) -> Path:
        """The SSH host keys psa-infra has recorded (PSA_INFRA_KNOWN_HOSTS)."""
        given = os.environ.get("PSA_INFRA_KNOWN_HOSTS")
        return Path(given) if given else self.state / "known_hosts"

    @property
    def inventory_dir(self) -> Path:
        return self.root / "inventory"

    @property
    def templates(self) -> Path:
        return self.root / "templates"

    @property
    def playbooks(self) -> Path:
        return self.root / "playbooks"

    @property
    def state(self) -> Path:
        """Where psa-infra keeps what it learns (known hosts, migration journals).

        ``.state`` under the root, or PSA_INFRA_STATE.
        """
        given = os.environ.get("PSA_INFRA_STATE")
        return Path(given) if given else self.root / ".state"

    def inventory_path(self, given: Path | None) -> Path:
        """Resolve an inventory argument: as given, else relative to the root."""
        if given is None:
            return self.root / DEFAULT_INVENTORY
        if given.is_absolute() or given.exists():
            return given
        candidate = self.root / given
        return candidate if candidate.exists() else given

    def shown(self, path: Path) -> Path:
        """How a path is named in messages: relative to the root when inside it."""
        try:
            return path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return path

    def inventories(self) -> list[Path]:
        """Every inventory file of the project, sorted."""
        return sorted(self.inventory_dir.glob("*.yml")) + sorted(
            self.inventory_dir.glob("*.yaml")
        )


def find_project(
    root: Path | None = None,
    start: Path | None = None,
    overrides: tuple[str, ...] = (),
) -> Project:
    """Locate the project root; raise a clear error when there is none."""
    if root is None and os.environ.get("PSA_INFRA_ROOT"):
        root = Path(os.environ["PSA_INFRA_ROOT"])
    if root is not None:
        if not (root / "inventory").is_dir():
            raise PsaInfraError(
                f"{root} is not a psa-infra project: it has no inventory/ folder",
                hint="pass the folder that holds inventory/ with --root "
                "or PSA_INFRA_ROOT",
            )
        return Project(root, overrides)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "inventory").is_dir():
            return Project(folder, overrides)
    raise PsaInfraError(
        f"no psa-infra project at or above {here} (no inventory/ folder found)",
        hint="run from inside the project, or pass --root DIR / set PSA_INFRA_ROOT",
    )
