"""Playbooks: the declarative setup steps of each role.

A playbook is ``playbooks/<role>.yml``: an ordered list of steps (packages,
directories, files rendered from templates, guarded commands, services) and
named handlers that steps notify when they change something. The ``base``
playbook runs on every container before its role's own. Rendering reads the
``file`` steps to know which templates go where; the offline plan lists every
step in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InventoryError, PlaybookError
from .inventory import ROLES
from .yamlsrc import Document, format_loc, load_yaml

# Paths are absolute, or start with a Jinja expression such as
# ``{{ inventory.app.root }}`` that the renderer expands to one.
_PATH = r"^(/|\{\{)"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileStep(_Model):
    """A file rendered from a template and installed with owner and mode."""

    template: str
    dest: str = Field(pattern=_PATH)
    owner: str = "root"
    group: str = "root"
    mode: str = Field(default="0644", pattern=r"^0[0-7]{3}$")
    secret: bool = False


class DirectoryStep(_Model):
    """A directory present with owner and mode."""

    path: str = Field(pattern=_PATH)
    owner: str = "root"
    group: str = "root"
    # Four octal digits; the first may set setgid, as packages do for
    # /etc/elasticsearch (2750). ``install -m 0750`` keeps a setgid bit that
    # is already there, so a step could not otherwise describe such a
    # directory without reporting drift on every run.
    mode: str = Field(default="0755", pattern=r"^[0-7]{4}$")


class CommandStep(_Model):
    """A shell command, run once thanks to its guard."""

    run: str
    creates: str | None = None
    unless: str | None = None
    timeout: int = Field(default=600, gt=0)


class ServiceStep(_Model):
    """A systemd service enabled and in a state."""

    name: str
    enabled: bool = True
    state: Literal["started", "stopped", "restarted", "reloaded"] = "started"


class Step(_Model):
    """One step: exactly one of packages, directory, file, command, service."""

    name: str
    packages: list[str] | None = None
    directory: DirectoryStep | None = None
    file: FileStep | None = None
    command: CommandStep | None = None
    service: ServiceStep | None = None
    notify: list[str] = Field(default_factory=list)
    # A Jinja expression over the template context; the step applies to a
    # container only when it is true, e.g. "'api-gateway' in services".
    when: str | None = None
    # Wait here until the data services are set up and answer: the steps
    # before it run while they are still being set up.
    wait_for_data: bool = False

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        given = [k for k in self.actions() if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a step has exactly one of packages, directory, file, command, service"
                + (f" (this one has {', '.join(given)})" if given else "")
            )
        return self

    @staticmethod
    def actions() -> tuple[str, ...]:
        """The action keys a step may carry."""
        return ("packages", "directory", "file", "command", "service")

    @property
    def kind(self) -> str:
        """Which action this step carries."""
        return next(k for k in self.actions() if getattr(self, k) is not None)


class Playbook(_Model):
    """The steps and handlers of one role."""

    role: str
    description: str = ""
    steps: list[Step]
    handlers: dict[str, Step] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _handlers_have_no_condition(self) -> Playbook:
        for name, handler in self.handlers.items():
            if handler.when is not None:
                raise ValueError(
                    f"handler '{name}' has 'when': a handler runs exactly when a "
                    "step notifies it; put the condition on the notifying step or "
                    "guard the handler's command"
                )
        return self

    @model_validator(mode="after")
    def _notified_handlers_exist(self) -> Playbook:
        for step in self.steps:
            for handler in step.notify:
                if handler not in self.handlers:
                    raise ValueError(
                        f"step '{step.name}' notifies unknown handler '{handler}'"
                    )
        return self

    def files(self) -> list[FileStep]:
        """The file steps of this playbook, in order."""
        return [s.file for s in self.steps if s.file is not None]


def _unknown_handler(document: Document) -> PlaybookError | None:
    """Name the exact ``notify`` entry that points at no handler."""
    data = document.data
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        return None
    handlers = data.get("handlers")
    known = set(handlers) if isinstance(handlers, dict) else set()
    for i, step in enumerate(data["steps"]):
        notify = step.get("notify") if isinstance(step, dict) else None
        for j, name in enumerate(notify if isinstance(notify, list) else []):
            if name not in known:
                loc = ("steps", i, "notify", j)
                listed = ", ".join(sorted(map(str, known))) or "none"
                return PlaybookError(
                    f"{document.where(loc)}: {format_loc(loc)}: unknown handler "
                    f"'{name}' (handlers: {listed})"
                )
    return None


def _parse(document: Document) -> Playbook:
    problem = _unknown_handler(document)
    if problem is not None:
        raise problem
    try:
        return Playbook.model_validate(document.data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key '{loc[-1]}'"
        elif error["type"] == "missing":
            message = "required key is missing"
        raise PlaybookError(
            f"{document.where(loc)}: {format_loc(loc)}: {message}"
        ) from None


def load_playbooks(directory: Path, shown: Path | None = None) -> dict[str, Playbook]:
    """Load ``base`` and every role's playbook from ``directory``."""
    playbooks: dict[str, Playbook] = {}
    for role in ("base", *ROLES):
        path = directory / f"{role}.yml"
        display = (shown or directory) / f"{role}.yml"
        try:
            document = load_yaml(path, display)
        except InventoryError as exc:
            raise PlaybookError(exc.message, exc.hint) from None
        playbook = _parse(document)
        if playbook.role != role:
            raise PlaybookError(
                f"{document.where(('role',))}: role: '{playbook.role}' does not match "
                f"the file name {role}.yml"
            )
        playbooks[role] = playbook
    return playbooks


def steps_for(playbooks: dict[str, Playbook], role: str) -> list[tuple[str, Step]]:
    """Return (playbook, step) for a container of ``role``: base first."""
    return [(name, step) for name in ("base", role) for step in playbooks[name].steps]


def describe(step: Step) -> str:
    """One line saying what a step makes true, for plans."""
    if step.packages is not None:
        return "packages " + " ".join(step.packages)
    if step.directory is not None:
        d = step.directory
        return f"directory {d.path} ({d.owner}:{d.group} {d.mode})"
    if step.file is not None:
        f = step.file
        # A secret file is always installed 0600, whatever mode it states.
        mode = "0600 secret" if f.secret else f.mode
        return f"file {f.dest} ({f.owner}:{f.group} {mode})"
    if step.command is not None:
        c = step.command
        guard = f" unless {c.unless}" if c.unless else ""
        guard += f" creates {c.creates}" if c.creates else ""
        return f"command {c.run}{guard}"
    assert step.service is not None
    s = step.service
    return f"service {s.name} {s.state}" + (", enabled" if s.enabled else "")


def as_dict(value: Any) -> Any:
    """A JSON-ready form of a step or playbook part."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    return value
