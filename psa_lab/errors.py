"""Errors of the local lab.

The lab's failures are :class:`~psa_infra.errors.PsaInfraError` subclasses, so
the ``psa-infra`` command prints them as one line with a hint::

    PsaInfraError           exit 1
    └── LabError            exit 9   the lab cannot be set up, used or removed
"""

from __future__ import annotations

from psa_infra.errors import ExitCode, PsaInfraError


class LabError(PsaInfraError):
    """The lab cannot be brought up, used or taken down."""

    exit_code = ExitCode.LAB
