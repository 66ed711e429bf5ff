"""The local lab: real Debian 12 LXC containers behind a fake Proxmox API.

An optional extra (``psa-infra[lab]``): it imports fakepve, which is AGPL
and a test tool, so the core package ``psa_infra`` never imports it.
"""

from .errors import LabError

__all__ = ["LabError"]
