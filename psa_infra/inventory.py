"""The inventory: containers, networks and shared settings of one layout.

An inventory is a YAML file under ``inventory/``. Loading it checks the
schema (types, required keys, unknown keys) with pydantic and turns every
problem into a message naming the file, the line and the key;
:mod:`psa_infra.checks` then checks what spans several keys.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import InventoryError
from .yamlsrc import Document, Loc, format_loc, load_yaml

Role = Literal["postgresql", "redis", "rabbitmq", "elasticsearch", "app"]
ROLES: tuple[str, ...] = typing.get_args(Role)

# Ports each data role listens on; app containers list their services' ports.
ROLE_PORTS: dict[str, dict[str, int]] = {
    "postgresql": {"postgresql": 5432},
    "redis": {"redis": 6379},
    "rabbitmq": {"amqp": 5672, "management": 15672, "clustering": 25672},
    "elasticsearch": {"http": 9200, "transport": 9300},
    "app": {},
}
SSH_PORT = 22
VMID_MIN, VMID_MAX = 100, 180

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|[KMGT]|B)?\s*$", re.IGNORECASE)
_SCALE = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _mebibytes(value: Any) -> Any:
    """Read a size: a whole number of MiB, or a string such as ``32G``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4096 (MiB) or 4G")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"'{value}' is not a size; write e.g. 512M, 4G or 4096")
        number, unit = int(match.group(1)), (match.group(2) or "M")[0].upper()
        if unit == "B":
            raise ValueError(f"'{value}' is too small a unit; use M or G")
        mib = number * _SCALE[unit]
        if mib != int(mib):
            raise ValueError(f"'{value}' is not a whole number of MiB")
        return int(mib)
    return value


def _gibibytes(value: Any) -> Any:
    """Read a disk size: a whole number of GiB, or a string such as ``500G``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    mib = _mebibytes(value)
    if isinstance(mib, int):
        if mib % 1024:
            raise ValueError(f"'{value}' is not a whole number of GiB")
        return mib // 1024
    return mib


MiB = Annotated[int, BeforeValidator(_mebibytes), Field(gt=0)]
GiB = Annotated[int, BeforeValidator(_gibibytes), Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class SecretRef(_Model):
    """Where a secret is read from: an environment variable or a file."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_a_value(cls, data: Any) -> Any:
        if isinstance(data, str | int | float):
            raise ValueError(
                "a secret is never written in the inventory; "
                "write {env: VARIABLE} or {file: /path/outside/the/repo}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' or 'file'")
        return self

    def describe(self) -> str:
        """Name the source without revealing the value."""
        return f"environment variable {self.env}" if self.env else f"file {self.file}"


class NodeSize(_Model):
    """The size of a Proxmox node, when the operator states it."""

    cores: int = Field(gt=0)
    memory: MiB


class ProxmoxSettings(_Model):
    """Cluster-wide Proxmox settings shared by every container."""

    node: str = Field(min_length=1)
    nodes: dict[str, NodeSize] = Field(default_factory=dict)
    storage: str = Field(min_length=1)
    template_storage: str = Field(default="local", min_length=1)
    template: str = Field(pattern=r"^[A-Za-z0-9._+-]+\.tar\.(gz|xz|zst)$")
    template_url: str | None = Field(default=None, pattern=r"^https://")
    template_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    tag: str = Field(default="psa", pattern=r"^[a-z0-9][a-z0-9_.+-]*$")

    @property
    def template_volume(self) -> str:
        """The template as a PVE volume id, ``storage:vztmpl/name``."""
        return f"{self.template_storage}:vztmpl/{self.template}"


class Network(_Model):
    """A bridge on the Proxmox node, its subnet and gateway."""

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address

    @field_validator("subnet", mode="before")
    @classmethod
    def _strict_subnet(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return ipaddress.IPv4Network(value, strict=True)
            except ValueError as exc:
                raise ValueError(f"'{value}' is not a network address: {exc}") from None
        return value

    @model_validator(mode="after")
    def _gateway_inside(self) -> Network:
        if self.gateway not in self.subnet:
            raise ValueError(f"gateway {self.gateway} is outside subnet {self.subnet}")
        return self


class DNS(_Model):
    """Name servers and search domain written into every container."""

    nameservers: list[ipaddress.IPv4Address] = Field(min_length=1)
    searchdomain: str | None = None


class SSHSettings(_Model):
    """How psa-infra reaches containers over SSH."""

    user: str = "root"
    public_key: str = Field(min_length=1)
    private_key: str = Field(min_length=1)
    jump_host: str | None = None
    connect_timeout: int = Field(default=10, gt=0)


class PackageSources(_Model):
    """Where the platform's software comes from."""

    # nodesource: Node.js 20 as the deployment strategy installs it;
    # debian: Debian 12's own Node.js 18 and npm.
    nodejs: Literal["nodesource", "debian"] = "nodesource"
    # upstream: RabbitMQ 3.12+ and Erlang from Team RabbitMQ's repositories;
    # debian: Debian 12's RabbitMQ 3.10.
    rabbitmq: Literal["upstream", "debian"] = "upstream"
    # elastic: Elastic's repository; none: configure Elasticsearch but do not
    # install it, where no package source is reachable.
    elasticsearch: Literal["elastic", "none"] = "elastic"


class Defaults(_Model):
    """Container settings that apply unless a container says otherwise."""

    swap: MiB = 512
    unprivileged: bool = True
    onboot: bool = True
    nesting: bool = True


class Pool(_Model):
    """The per-process PostgreSQL pool every service opens (shared/database)."""

    max: int = Field(default=20, gt=0)
    idle_timeout_ms: int = Field(default=30000, ge=0)
    connection_timeout_ms: int = Field(default=2000, gt=0)


class PostgresSettings(_Model):
    """PostgreSQL server and the app's database."""

    version: Literal[15] = 15
    port: Port = 5432
    database: str = Field(default="psa_platform", pattern=r"^[a-z_][a-z0-9_]*$")
    user: str = Field(default="psa_app", pattern=r"^[a-z_][a-z0-9_]*$")
    max_connections: int = Field(default=500, gt=0)
    reserved_connections: int = Field(default=50, ge=0)
    pool: Pool = Field(default_factory=Pool)


class RedisSettings(_Model):
    """Redis server settings."""

    port: Port = 6379
    maxmemory_policy: Literal[
        "noeviction", "allkeys-lru", "volatile-lru", "allkeys-lfu", "volatile-lfu"
    ] = "allkeys-lru"


class RabbitMQSettings(_Model):
    """RabbitMQ broker settings."""

    port: Port = 5672
    user: str = Field(default="psa_app", pattern=r"^[A-Za-z0-9_.-]+$")
    vhost: str = Field(default="psa", pattern=r"^[A-Za-z0-9_.-]+$")


class ElasticsearchSettings(_Model):
    """Elasticsearch node settings."""

    port: Port = 9200
    cluster_name: str = Field(default="psa", pattern=r"^[A-Za-z0-9_-]+$")


class ServiceSpec(_Model):
    """One Node.js service placed on an app container."""

    port: Port
    instances: int = Field(gt=0, le=64)


class AppSettings(_Model):
    """The Node.js services of the platform and where they are installed."""

    root: str = Field(default="/opt/psa-platform", pattern=r"^/[A-Za-z0-9._/-]+$")
    node_env: str = Field(default="production", pattern=r"^[a-z]+$")
    services: list[str] = Field(min_length=1)
    backup_dir: str = Field(default="/backup/psa-app", pattern=r"^/[A-Za-z0-9._/-]+$")
    backup_retention_days: int = Field(default=7, gt=0)
    log_max_size: str = Field(default="100M", pattern=r"^\d+[KMG]$")
    log_retain: int = Field(default=7, gt=0)

    @field_validator("services")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
                raise ValueError(f"'{name}' is not a service name (a-z, 0-9, -)")
        return names


class Container(_Model):
    """One LXC container and what runs in it."""

    vmid: int
    hostname: str
    role: Role
    node: str | None = None
    cores: int = Field(gt=0)
    memory: MiB
    swap: MiB | None = None
    disk: GiB
    bridge: str
    address: ipaddress.IPv4Address
    services: dict[str, ServiceSpec] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    onboot: bool | None = None

    @field_validator("vmid")
    @classmethod
    def _vmid(cls, value: int) -> int:
        if not VMID_MIN <= value <= VMID_MAX:
            raise ValueError(
                f"vmid {value} is outside psa-infra's range {VMID_MIN}-{VMID_MAX}"
            )
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not _HOSTNAME.match(value):
            raise ValueError(
                f"'{value}' is not a valid hostname (lowercase letters, digits, '-')"
            )
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_.+-]*", tag):
                raise ValueError(f"'{tag}' is not a Proxmox tag (a-z, 0-9, _ . + -)")
        return tags


class Inventory(_Model):
    """A whole layout: shared settings and its containers."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str | None = None
    proxmox: ProxmoxSettings
    networks: dict[str, Network] = Field(min_length=1)
    dns: DNS
    ssh: SSHSettings
    defaults: Defaults = Field(default_factory=Defaults)
    packages: PackageSources = Field(default_factory=PackageSources)
    secrets: dict[str, SecretRef] = Field(default_factory=dict)
    postgresql: PostgresSettings = Field(default_factory=PostgresSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    rabbitmq: RabbitMQSettings = Field(default_factory=RabbitMQSettings)
    elasticsearch: ElasticsearchSettings = Field(default_factory=ElasticsearchSettings)
    app: AppSettings
    containers: list[Container] = Field(min_length=1)
    # Set by migrations (psa_infra.placement), never by the file: which
    # container the gateway sends a service's requests to while it runs in
    # two places, and which old gateways forward to a new one.
    _routes: dict[str, str] = PrivateAttr(default_factory=dict)
    _forwards: dict[str, str] = PrivateAttr(default_factory=dict)

    def by_role(self, role: str) -> list[Container]:
        """Return the containers of one role, in inventory order."""
        return [c for c in self.containers if c.role == role]

    def first(self, role: str) -> Container:
        """Return the container of a role that clients connect to."""
        found = self.by_role(role)
        if not found:
            raise InventoryError(f"the inventory has no container with role '{role}'")
        return found[0]

    def find(self, key: str) -> Container:
        """Return a container by hostname or vmid."""
        for container in self.containers:
            if key in (container.hostname, str(container.vmid)):
                return container
        known = ", ".join(c.hostname for c in self.containers)
        raise InventoryError(f"no container '{key}' in inventory {self.name} ({known})")

    def node_of(self, container: Container) -> str:
        """Return the Proxmox node a container belongs on."""
        return container.node or self.proxmox.node

    def placement(self) -> dict[str, Container]:
        """Map each service to the container the gateway sends it to."""
        found = {name: c for c in self.containers for name in c.services}
        by_name = {c.hostname: c for c in self.containers}
        for service, host in self._routes.items():
            if host in by_name and service in by_name[host].services:
                found[service] = by_name[host]
        return found

    def routes(self) -> dict[str, str]:
        """Services that a migration routes to a given container (hostname)."""
        return dict(self._routes)

    def forwards(self) -> dict[str, str]:
        """Old gateway containers that forward to the new one (hostnames)."""
        return dict(self._forwards)

    def forward_of(self, container: Container) -> Container | None:
        """The container this one's gateway forwards every request to, if any."""
        target = self._forwards.get(container.hostname)
        return next((c for c in self.containers if c.hostname == target), None)

    def set_routing(self, routes: dict[str, str], forwards: dict[str, str]) -> None:
        """Record a migration's routing (see :mod:`psa_infra.placement`)."""
        self._routes = dict(routes)
        self._forwards = dict(forwards)


class LoadedInventory:
    """An inventory together with the document it came from."""

    def __init__(self, inventory: Inventory, document: Document) -> None:
        self.inventory = inventory
        self.document = document
        self.warnings: list[str] = []
        # Service moves applied to the file's layout (psa_infra.placement).
        self.moves: list[Any] = []

    @property
    def path(self) -> Path:
        """The file the inventory was read from, as shown to the operator."""
        return self.document.path


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """Return the model class that holds the last key of ``loc``."""
    current: Any = Inventory
    for part in loc[:-1]:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        else:
            args = typing.get_args(current)
            current = args[-1] if args else None
        while typing.get_origin(current) in (typing.Union, Annotated) or (
            type(current).__name__ == "UnionType"
        ):
            members = [a for a in typing.get_args(current) if a is not type(None)]
            current = members[0] if members else None
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


_FRIENDLY = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "too_short": "must not be empty",
    "string_pattern_mismatch": "does not have the expected form ({pattern})",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a text value",
    "list_type": "must be a list",
    "dict_type": "must be a mapping of keys",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
    "ip_v4_address": "must be an IPv4 address",
    "ip_v4_network": "must be an IPv4 network such as 10.0.20.0/24",
    "literal_error": "must be one of {expected}",
}


def _describe(error: Any, document: Document) -> tuple[int, str]:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    key = format_loc(loc)
    if kind == "extra_forbidden":
        model = _model_at(loc)
        message = f"unknown key '{loc[-1]}'"
        if model is not None:
            close = difflib.get_close_matches(
                str(loc[-1]), list(model.model_fields), n=1
            )
            if close:
                message += f" (did you mean '{close[0]}'?)"
    elif kind == "missing":
        message = "required key is missing"
    else:
        if kind in _FRIENDLY:
            message = _FRIENDLY[kind].format(**error.get("ctx", {}))
        else:
            message = error["msg"]
            message = message.removeprefix("Value error, ").removeprefix(
                "Assertion failed, "
            )
        if kind != "value_error":
            shown = error.get("input")
            if isinstance(shown, str | int | float | bool):
                message = f"{message} (got {shown!r})"
    return document.line(loc) or 0, f"{document.where(loc)}: {key}: {message}"


def parse_inventory(document: Document) -> Inventory:
    """Validate a loaded document against the schema."""
    if not isinstance(document.data, dict):
        raise InventoryError(f"{document.where(())}: an inventory is a mapping of keys")
    try:
        return Inventory.model_validate(document.data)
    except ValidationError as exc:
        described = sorted({_describe(error, document) for error in exc.errors()})
        problems = [text for _, text in described]
        raise InventoryError(problems[0], problems=problems) from None


def load_inventory(
    path: Path,
    display: Path | None = None,
    root: Path | None = None,
    overrides: Sequence[tuple[str, str]] = (),
) -> LoadedInventory:
    """Read, parse and check an inventory file.

    ``display`` is how the file is named in messages; ``root`` is the
    project root, inside which no secret file may live; ``overrides`` are
    (``key=value``, where it was given) pairs applied before validation.
    """
    from .checks import check_inventory

    document = load_yaml(path, display)
    for assignment, source in overrides:
        document.override(assignment, source)
    loaded = LoadedInventory(parse_inventory(document), document)
    check_inventory(loaded, root)
    return loaded
