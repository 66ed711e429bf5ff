"""Settings of the Proxmox API connection, read from the environment.

Kept apart from :mod:`psa_infra.proxmox` so that checking them costs no HTTP
import: a bad setting is reported before anything is sent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import ProxmoxError
from .secrets import Secret

DEFAULT_PORT = 8006
_TOKEN_ID = r"^[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*$"


@dataclass(frozen=True)
class Settings:
    """How to reach and authenticate to the Proxmox API."""

    url: str
    token_id: str | None = None
    token_secret: Secret | None = None
    user: str | None = None
    password: Secret | None = None
    ca_file: str | None = None
    insecure: bool = False
    timeout: float = 30.0
    retries: int = 5
    backoff: float = 0.2

    @property
    def verify(self) -> str | bool:
        """What requests checks the server certificate against."""
        if self.insecure:
            return False
        return self.ca_file if self.ca_file else True

    @property
    def who(self) -> str:
        """The identity used, for messages (never the secret)."""
        return f"API token {self.token_id}" if self.token_id else f"user {self.user}"


def settings_from_env(
    env: Mapping[str, str] | None = None,
    ca_file: str | None = None,
    insecure: bool = False,
) -> Settings:
    """Read the connection settings from the environment and the flags.

    PROXMOX_URL (or PROXMOX_HOST and PROXMOX_PORT) says where; an API token
    (PROXMOX_TOKEN_ID, PROXMOX_TOKEN_SECRET) is preferred to a user and
    password (PROXMOX_USER, PROXMOX_PASSWORD). ``ca_file`` (or
    PROXMOX_CA_FILE) verifies a private CA.
    """

    env = os.environ if env is None else env
    hint_env = (
        "set PROXMOX_URL=https://HOST:8006 and PROXMOX_TOKEN_ID=user@realm!name "
        "with PROXMOX_TOKEN_SECRET (or PROXMOX_USER and PROXMOX_PASSWORD)"
    )
    url = env.get("PROXMOX_URL", "").strip()
    if not url and env.get("PROXMOX_HOST"):
        port = env.get("PROXMOX_PORT") or DEFAULT_PORT
        url = f"https://{env['PROXMOX_HOST'].strip()}:{port}"
    if not url:
        raise ProxmoxError("the Proxmox API address is not set", hint=hint_env)
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ProxmoxError(
            f"PROXMOX_URL must be an https:// address, not {url!r}",
            hint="the API token or password would otherwise cross the network in clear",
        )
    port = parts.port or DEFAULT_PORT
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    url = f"https://{host}:{port}"

    token_id = env.get("PROXMOX_TOKEN_ID") or None
    token_secret = env.get("PROXMOX_TOKEN_SECRET") or None
    user = env.get("PROXMOX_USER") or None
    password = env.get("PROXMOX_PASSWORD") or None
    if token_id or token_secret:
        if not (token_id and token_secret):
            raise ProxmoxError(
                "an API token needs both PROXMOX_TOKEN_ID and PROXMOX_TOKEN_SECRET",
                hint=hint_env,
            )
        if not re.match(_TOKEN_ID, token_id):
            raise ProxmoxError(
                f"PROXMOX_TOKEN_ID {token_id!r} is not of the form user@realm!name",
                hint="e.g. PROXMOX_TOKEN_ID=psa@pve!provision",
            )
        user = password = None
    elif user or password:
        if not (user and password):
            raise ProxmoxError(
                "a password login needs both PROXMOX_USER and PROXMOX_PASSWORD",
                hint=hint_env,
            )
        if "@" not in user:
            user += "@pam"
    else:
        raise ProxmoxError("no Proxmox credentials are set", hint=hint_env)

    ca_file = ca_file or env.get("PROXMOX_CA_FILE") or None
    if insecure:
        ca_file = None
    elif ca_file is not None and not os.path.isfile(ca_file):
        raise ProxmoxError(
            f"CA file {ca_file} does not exist",
            hint="give the PEM file of the CA that signed the Proxmox certificate",
        )
    return Settings(
        url=url,
        token_id=token_id,
        token_secret=Secret("PROXMOX_TOKEN_SECRET", token_secret)
        if token_secret
        else None,
        user=user,
        password=Secret("PROXMOX_PASSWORD", password) if password else None,
        ca_file=ca_file,
        insecure=insecure,
    )
