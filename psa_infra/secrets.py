"""Secret values: read from their references, masked in every output.

The inventory holds only references (an environment variable or a file
outside the project). A :class:`Secret` keeps the value but prints as a mask,
so an accidental ``print`` or log line cannot leak it; code that needs the
value asks for it with :meth:`Secret.reveal`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import SecretError
from .inventory import LoadedInventory, SecretRef

MASK = "********"


class Secret:
    """A secret value that masks itself when printed."""

    __slots__ = ("name", "_value")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def reveal(self) -> str:
        """Return the real value, for a file or a request that needs it."""
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({self.name!r}, {MASK!r})"


def read_secret(name: str, ref: SecretRef, where: str) -> Secret:
    """Read one secret from its reference; ``where`` names it in errors."""
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None or value == "":
            raise SecretError(
                f"{where}: secret '{name}' needs environment variable {ref.env}, "
                "which is not set",
                hint=f"export {ref.env}=... (or point the secret at a file)",
            )
    else:
        assert ref.file is not None
        path = Path(ref.file).expanduser()
        try:
            mode = path.stat().st_mode
            value = path.read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise SecretError(
                f"{where}: secret '{name}' cannot be read from {path}: {exc.strerror}"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"{where}: secret file {path} is readable by others "
                f"(mode {stat.S_IMODE(mode):04o})",
                hint=f"chmod 600 {path}",
            )
        if not value:
            raise SecretError(f"{where}: secret file {path} is empty")
    if "\n" in value or "\r" in value:
        raise SecretError(
            f"{where}: secret '{name}' holds a line break, which no config accepts"
        )
    return Secret(name, value)


def resolve_secrets(loaded: LoadedInventory) -> dict[str, Secret]:
    """Read every secret of an inventory; all must be readable."""
    return {
        name: read_secret(name, ref, loaded.document.where(("secrets", name)))
        for name, ref in loaded.inventory.secrets.items()
    }


def masked_secrets(loaded: LoadedInventory) -> dict[str, Secret]:
    """Stand-ins for every secret, for plans made without reading them."""
    return {name: Secret(name, MASK) for name in loaded.inventory.secrets}
