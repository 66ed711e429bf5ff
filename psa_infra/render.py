"""Render configs from the Jinja2 templates under ``templates/``.

Two kinds of output come from templates: the Proxmox create parameters of
each container (``templates/lxc/create.yml.j2``, read back as YAML), and the
files each role's playbook installs on its host. Rendering is deterministic:
the same inventory and templates give the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shlex
import traceback
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from .errors import TemplateError
from .inventory import Container, Inventory, LoadedInventory
from .playbooks import Playbook, Step, steps_for
from .secrets import MASK, Secret
from .yamlsrc import LOADER

CREATE_TEMPLATE = "lxc/create.yml.j2"
CONTEXT_LINES = 2


@dataclass(frozen=True)
class RenderedFile:
    """A file for one host, ready to be installed."""

    host: str
    dest: str
    content: str
    owner: str
    group: str
    mode: str
    secret: bool
    template: str


def _bytecode_cache() -> Any:
    """A cache of compiled templates kept between runs, or None.

    Keyed by each template's source, so a run compiles only the templates
    that changed. It lives in the user's cache folder, made private to the
    user; one that cannot be made, or is open to others, is not used.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    folder = Path(base) / "psa-infra" / "templates"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        status = folder.stat()
    except OSError:
        return None
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        return None
    return jinja2.FileSystemBytecodeCache(str(folder))


class Renderer:
    """Templates of one project, rendered against one inventory."""

    def __init__(
        self,
        templates: Path,
        loaded: LoadedInventory,
        secrets: Mapping[str, Secret],
        ssh_public_key: str | None = None,
    ) -> None:
        self.templates = templates
        self.loaded = loaded
        self.inventory: Inventory = loaded.inventory
        self.secrets = dict(secrets)
        self.ssh_public_key = ssh_public_key
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            bytecode_cache=_bytecode_cache(),
        )
        # Paths, commands and conditions in playbooks, compiled once each.
        self._inline: dict[str, jinja2.Template] = {}
        self._tests: dict[str, Any] = {}
        self.env.filters["tojson"] = _tojson
        self.env.filters["js"] = _tojson
        self.env.filters["mib_fraction"] = _mib_fraction
        self.env.filters["shquote"] = _shquote
        self.env.filters["sqlquote"] = _sqlquote
        self.env.filters["dquote"] = _dquote
        self.env.filters["urlquote"] = _urlquote
        self.env.filters["rabbitmq_password_hash"] = _rabbitmq_password_hash

    def context(self, container: Container, reveal: bool = True) -> dict[str, Any]:
        """Return the values templates see for one container."""
        inventory = self.inventory
        placement = inventory.placement()
        ordered = [n for n in inventory.app.services if n in container.services]
        upstreams = {
            name: {
                "host": (
                    "127.0.0.1"
                    if host.hostname == container.hostname
                    else str(host.address)
                ),
                "port": host.services[name].port,
                "container": host.hostname,
            }
            for name in inventory.app.services
            if (host := placement.get(name)) is not None
        }
        app_networks = sorted(
            {str(inventory.networks[c.bridge].subnet) for c in inventory.by_role("app")}
        )

        forward_to = inventory.forward_of(container)
        forward = (
            {
                "host": str(forward_to.address),
                "port": forward_to.services["api-gateway"].port,
                "container": forward_to.hostname,
            }
            if forward_to is not None and "api-gateway" in forward_to.services
            else None
        )

        def address(role: str) -> str:
            found = inventory.by_role(role)
            return str(found[0].address) if found else ""

        return {
            "inventory": inventory,
            "proxmox": inventory.proxmox,
            "container": container,
            "network": inventory.networks[container.bridge],
            "node": inventory.node_of(container),
            "services": {n: container.services[n] for n in ordered},
            "upstreams": upstreams,
            "forward": forward,
            "app_networks": app_networks,
            "hosts": {
                "postgresql": address("postgresql"),
                "redis": address("redis"),
                "rabbitmq": address("rabbitmq"),
                "elasticsearch": address("elasticsearch"),
            },
            "secrets": {
                name: (s.reveal() if reveal else str(s))
                for name, s in self.secrets.items()
            },
            "ssh_public_key": self.ssh_public_key,
        }

    def render(self, name: str, context: Mapping[str, Any]) -> str:
        """Render one template; errors name the template and line."""
        try:
            template = self.env.get_template(name)
            return template.render(context)
        except jinja2.TemplateSyntaxError as exc:
            raise self._error(
                exc.name or name, exc.lineno, exc.message or str(exc)
            ) from None
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"template {exc.name} not found under {self.templates}",
                hint="check the playbook's file step or restore the template",
            ) from None
        except (
            jinja2.TemplateError,
            TypeError,
            ValueError,
            KeyError,
            AttributeError,
            ArithmeticError,
        ) as exc:
            line = _template_line(exc, self.templates)
            raise self._error(
                line[0] if line else name, line[1] if line else None, str(exc)
            ) from None

    def create_params(self, container: Container) -> dict[str, Any]:
        """Return the Proxmox API parameters that create ``container``."""
        text = self.render(CREATE_TEMPLATE, self.context(container, reveal=False))
        try:
            params = yaml.load(text, Loader=LOADER)  # noqa: S506 - a safe loader
        except yaml.YAMLError as exc:
            raise TemplateError(
                f"{CREATE_TEMPLATE} did not render to valid YAML for "
                f"{container.hostname}: {exc}"
            ) from None
        if not isinstance(params, dict):
            raise TemplateError(f"{CREATE_TEMPLATE} must render to a mapping")
        return {k: v for k, v in params.items() if v is not None and v != ""}

    def steps(
        self, container: Container, playbooks: Mapping[str, Playbook]
    ) -> list[tuple[str, Step]]:
        """Return (playbook, step) for ``container`` with paths and commands expanded.

        A directory's ``path``, a file's ``dest`` and a command's ``run``,
        ``creates`` and ``unless`` may use the template context, e.g.
        ``{{ inventory.app.root }}`` or ``{{ inventory.postgresql.user | shquote }}``.
        Commands are expanded without ``secrets``: a password on a command
        line would show in process lists, plans and logs, so a command that
        needs one reads it from a secret file instead.
        """
        context = self.context(container, reveal=False)
        return [
            (name, self._expand_step(step, context, name))
            for name, step in steps_for(dict(playbooks), container.role)
            if self._wanted(step, context, name)
        ]

    def handlers(
        self, container: Container, playbooks: Mapping[str, Playbook]
    ) -> dict[str, Step]:
        """Return the handlers ``container``'s steps may notify, expanded."""
        context = self.context(container, reveal=False)
        return {
            handler: self._expand_step(step, context, name)
            for name in ("base", container.role)
            for handler, step in playbooks[name].handlers.items()
        }

    def files(
        self,
        container: Container,
        playbooks: Mapping[str, Playbook],
        reveal: bool = True,
    ) -> list[RenderedFile]:
        """Render every file the playbooks install on ``container``."""
        context = self.context(container, reveal=reveal)
        rendered = []
        for _, step in self.steps(container, playbooks):
            if step.file is None:
                continue
            rendered.append(
                RenderedFile(
                    host=container.hostname,
                    dest=step.file.dest,
                    content=self.render(step.file.template, context),
                    owner=step.file.owner,
                    group=step.file.group,
                    mode="0600" if step.file.secret else step.file.mode,
                    secret=step.file.secret,
                    template=step.file.template,
                )
            )
        return rendered

    def _expand_step(
        self, step: Step, context: Mapping[str, Any], playbook: str
    ) -> Step:
        where = f"playbooks/{playbook}.yml: step '{step.name}'"
        if step.file is not None:
            dest = self._expand(step.file.dest, context, where, absolute=True)
            return step.model_copy(
                update={"file": step.file.model_copy(update={"dest": dest})}
            )
        if step.directory is not None:
            path = self._expand(step.directory.path, context, where, absolute=True)
            directory = step.directory.model_copy(update={"path": path})
            return step.model_copy(update={"directory": directory})
        if step.command is not None:
            bare = {k: v for k, v in context.items() if k != "secrets"}
            fields = {
                key: self._expand(value, bare, where)
                for key in ("run", "creates", "unless")
                if (value := getattr(step.command, key)) is not None
            }
            command = step.command.model_copy(update=fields)
            return step.model_copy(update={"command": command})
        return step

    def _expand(
        self, text: str, context: Mapping[str, Any], where: str, absolute: bool = False
    ) -> str:
        if "{{" not in text and "{%" not in text:
            return text
        try:
            if text not in self._inline:
                self._inline[text] = self.env.from_string(text)
            result = self._inline[text].render(context)
        except jinja2.TemplateError as exc:
            hint = None
            if "'secrets' is undefined" in str(exc):
                hint = (
                    "commands never see secrets; render the secret into a file "
                    "step with 'secret: true' and have the command read that file"
                )
            raise TemplateError(
                f"{where}: {text.strip()!r}: {exc}", hint=hint
            ) from None
        if absolute and not result.startswith("/"):
            raise TemplateError(
                f"{where}: {text!r} expands to {result!r}, not an absolute path"
            )
        return result

    def _wanted(self, step: Step, context: Mapping[str, Any], playbook: str) -> bool:
        if step.when is None:
            return True
        try:
            # undefined_to_none would turn a misspelt name into a silent False.
            if step.when not in self._tests:
                self._tests[step.when] = self.env.compile_expression(
                    step.when, undefined_to_none=False
                )
            test = self._tests[step.when]
            return bool(test(**context))
        except jinja2.TemplateError as exc:
            raise TemplateError(
                f"playbooks/{playbook}.yml: step '{step.name}': bad 'when' "
                f"expression {step.when!r}: {exc}"
            ) from None

    def _error(self, name: str, line: int | None, message: str) -> TemplateError:
        # Jinja's lexer reports the loader's file path instead of the
        # template name; name the template as the playbooks do.
        given = Path(name)
        if given.is_file() and given.resolve().is_relative_to(self.templates.resolve()):
            name = given.resolve().relative_to(self.templates.resolve()).as_posix()
        where = f"{name}" + (f" line {line}" if line else "")
        excerpt = ""
        path = self.templates / name
        if line and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            start = max(line - 1 - CONTEXT_LINES, 0)
            shown = lines[start : line + CONTEXT_LINES]
            excerpt = "\n" + "\n".join(
                f"{'>' if start + i + 1 == line else ' '} {start + i + 1:4} | {text}"
                for i, text in enumerate(shown)
            )
        return TemplateError(f"template {where}: {message}{excerpt}")


def _template_line(exc: BaseException, templates: Path) -> tuple[str, int] | None:
    """Find the template file and line where a render error was raised."""
    # Frames carry the loader's spelling of the path, which may be relative
    # or go through a symlink, so compare resolved paths.
    root = templates.resolve()
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename).resolve()
        if frame.lineno and path.is_relative_to(root):
            found = (path.relative_to(root).as_posix(), frame.lineno)
    return found


def _tojson(value: Any) -> str:
    """Quote a value for JSON, YAML or JavaScript source."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return json.dumps(value, default=str, sort_keys=False)


def _shquote(value: Any) -> str:
    """Quote a value as one word for a POSIX shell."""
    return shlex.quote(str(value))


def _sqlquote(value: Any) -> str:
    """Quote a value as an SQL or postgresql.conf string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _dquote(value: Any) -> str:
    """Quote a value in double quotes, escaping backslash and quote (redis.conf)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _urlquote(value: Any) -> str:
    """Percent-encode a value for one part of a URL, ``/`` and ``@`` included."""
    return urllib.parse.quote(str(value), safe="")


def _rabbitmq_password_hash(password: Any, user: Any) -> str:
    """Hash a password as RabbitMQ's ``rabbit_password_hashing_sha256`` stores it.

    The stored form is base64(salt + sha256(salt + password)) with a 4-byte
    salt. RabbitMQ draws the salt at random; here it comes from the password
    and the user name, so the same secret always renders the same bytes and a
    converged host sees no change. A masked render stays masked.
    """
    # str() of a StrictUndefined raises, so a misspelt name is still an error.
    secret, name = str(password), str(user)
    if secret == MASK:
        return MASK
    key = secret.encode()
    label = f"psa-infra rabbitmq salt:{name}".encode()
    salt = hmac.new(key, label, hashlib.sha256).digest()[:4]
    digest = hashlib.sha256(salt + key).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def _mib_fraction(mib: int, fraction: float, minimum: int = 1) -> int:
    """Return a whole share of a size in MiB, never below ``minimum``."""
    return max(int(mib * fraction), minimum)


def write_files(files: list[RenderedFile], out: Path) -> list[Path]:
    """Write rendered files under ``out/<host>/<dest>``; secret files are 0600."""
    written = []
    for item in files:
        path = out / item.host / item.dest.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o600 if item.secret else int(item.mode, 8) & 0o755
        temporary = path.with_name(path.name + ".tmp")
        temporary.unlink(missing_ok=True)
        fd = _open_private(temporary, mode)
        with open(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(item.content)
        temporary.chmod(mode)
        temporary.replace(path)
        written.append(path)
    return written


def _open_private(path: Path, mode: int) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
