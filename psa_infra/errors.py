"""Errors psa-infra reports to an operator, and their exit codes.

Every failure a user can cause or meet is one of these; the CLI prints its
message and hint and exits with its code, never a traceback::

    PsaInfraError                 exit 1   (root: message + optional hint)
    ├── InventoryError            exit 3   bad or inconsistent inventory
    │   └── SecretError           exit 3   a secret reference cannot be read
    ├── TemplateError             exit 4   a template fails to render
    ├── PlaybookError             exit 4   a playbook file is malformed
    ├── ProxmoxError              exit 5   the Proxmox API refused or failed
    │   └── TaskError             exit 5   a Proxmox task ended in error
    ├── SSHError                  exit 6   a host cannot be reached or a command failed
    ├── PlanConflictError         exit 7   the cluster cannot take the inventory
    └── MigrationError            exit 8   a service migration stopped

The optional lab (``psa_lab``) adds LabError, exit 9.

Exit code 2 is reserved for "changes present" under ``--detailed-exitcode``
and for command-line usage errors, as Terraform and Click use it.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of the ``psa-infra`` command."""

    OK = 0
    ERROR = 1
    CHANGES = 2
    INVENTORY = 3
    TEMPLATE = 4
    PROXMOX = 5
    SSH = 6
    CONFLICT = 7
    MIGRATION = 8
    LAB = 9
    INTERRUPTED = 130


class PsaInfraError(Exception):
    """A failure with a message for the operator and an optional hint."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InventoryError(PsaInfraError):
    """The inventory is malformed or inconsistent; one or more problems."""

    exit_code = ExitCode.INVENTORY

    def __init__(
        self, message: str, hint: str | None = None, problems: list[str] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.problems = problems or [message]


class SecretError(InventoryError):
    """A secret reference (environment variable or file) cannot be resolved."""


class TemplateError(PsaInfraError):
    """A template is missing, fails to parse, or uses an undefined value."""

    exit_code = ExitCode.TEMPLATE


class PlaybookError(PsaInfraError):
    """A playbook file is malformed."""

    exit_code = ExitCode.TEMPLATE


class ProxmoxError(PsaInfraError):
    """The Proxmox API refused a request or could not be reached."""

    exit_code = ExitCode.PROXMOX


class TaskError(ProxmoxError):
    """A Proxmox task ended in error or did not end in time."""


class SSHError(PsaInfraError):
    """A host could not be reached over SSH, or a command on it failed."""

    exit_code = ExitCode.SSH


class PlanConflictError(PsaInfraError):
    """The cluster holds something the inventory cannot be applied over."""

    exit_code = ExitCode.CONFLICT


class MigrationError(PsaInfraError):
    """A service migration stopped; its journal says where."""

    exit_code = ExitCode.MIGRATION
