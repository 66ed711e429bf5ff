"""What the lab made and where it keeps it: the lab state folder.

Everything the lab creates on the host is written down here *before* it is
created, so ``lab down`` removes exactly that, by name, even after a crash::

    STATE/
      lab.json              what exists: bridges, firewall chains and rules,
                            ip_forward before the lab, server address, token id
      containers/NAME       one empty file per real LXC container the lab made
      server.pid            the API server's process id
      server.log            the API server's log
      pki/                  the lab's CA and the server certificate (keys 0600)
      token                 the API token secret (0600)
      secrets/VARIABLE      generated values of the inventory's secrets that
                            are read from environment variables (0600)
      ssh/id_ed25519        the lab's SSH key pair (private key 0600)
      known_hosts           the SSH host keys the lab generated per container
      cache/                the Debian 12 template, packed and unpacked; kept
                            across up and down
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import LabError

TEMPLATE = "debian-12-standard_12.0-1_amd64.tar.zst"
CONTAINER_PREFIX = "psa-lab-"
TOKEN_ID = "root@pam!psa-lab"


@dataclass
class Record:
    """What the lab has made on the host; saved as ``lab.json``."""

    inventory: str = ""
    host: str = ""
    port: int = 0
    nodes: list[str] = field(default_factory=list)
    storages: dict[str, str] = field(default_factory=dict)
    template_volume: str = ""
    # bridge name -> {"address": "10.0.20.1/24", "hwaddr": "02:..."}
    bridges: dict[str, dict[str, str]] = field(default_factory=dict)
    # (table, chain) pairs of the lab's own iptables chains
    chains: list[list[str]] = field(default_factory=list)
    # (table, chain, rule...) of rules the lab put into chains it does not own
    rules: list[list[str]] = field(default_factory=list)
    ip_forward_before: str | None = None
    max_map_count_before: str | None = None
    started: bool = False


class LabState:
    """The lab state folder and its files."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # ------------------------------------------------------------ paths

    @property
    def record_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def pidfile(self) -> Path:
        return self.root / "server.pid"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def token_file(self) -> Path:
        return self.root / "token"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def template(self) -> Path:
        return self.cache / TEMPLATE

    @property
    def base(self) -> Path:
        """The template unpacked: the read-only layer under every container."""
        return self.cache / TEMPLATE.removesuffix(".tar.zst")

    # ----------------------------------------------------------- record

    def exists(self) -> bool:
        """True when a lab was brought up here and not yet taken down."""
        return self.record_file.exists()

    def load(self) -> Record:
        """Read what the lab made."""
        try:
            data: dict[str, Any] = json.loads(
                self.record_file.read_text(encoding="utf-8")
            )
        except FileNotFoundError:
            return Record()
        except (OSError, json.JSONDecodeError) as exc:
            raise LabError(
                f"cannot read the lab record {self.record_file}: {exc}",
                hint="remove what the lab made by hand (docs/lab.md), then delete it",
            ) from None
        known = set(Record.__dataclass_fields__)
        return Record(**{k: v for k, v in data.items() if k in known})

    def save(self, record: Record) -> None:
        """Write the record atomically, so a crash leaves the old or the new one."""
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.record_file.with_suffix(".tmp")
        temporary.write_text(
            json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8"
        )
        temporary.replace(self.record_file)

    # ------------------------------------------------------- containers

    def add_container(self, name: str) -> None:
        """Note a real container before it is made."""
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        (self.containers_dir / name).touch()

    def drop_container(self, name: str) -> None:
        """Forget a real container once it is gone."""
        (self.containers_dir / name).unlink(missing_ok=True)

    def containers(self) -> list[str]:
        """Names of the real containers the lab made and has not removed."""
        if not self.containers_dir.is_dir():
            return []
        return sorted(p.name for p in self.containers_dir.iterdir())

    # ---------------------------------------------------------- secrets

    def token(self) -> str:
        """The API token secret."""
        try:
            return self.token_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise LabError(
                "the lab is not up (no API token)", hint="run: psa-infra lab up"
            ) from None

    def server_pid(self) -> int | None:
        """The server's process id, when its pidfile names a live lab server."""
        try:
            pid = int(self.pidfile.read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if is_lab_server(pid, self.root) else None


def write_private(path: Path, data: str | bytes) -> None:
    """Write a secret file with mode 0600, never readable by others even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def is_lab_server(pid: int, root: Path) -> bool:
    """True if ``pid`` is the lab server of this state folder (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode("utf-8", "replace") for a in argv]
    return "psa_lab.server" in words and str(root.resolve()) in words
