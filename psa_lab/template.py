"""The Debian 12 container template, built once with debootstrap and cached.

The template is packed as Proxmox packs its own (a zstd tarball of the root
filesystem) and named as the inventory names it,
``debian-12-standard_12.0-1_amd64.tar.zst``. It has no SSH host keys: each
container gets its own when it is created, as on Proxmox.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .host import run, say

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# systemd-sysv gives /sbin/init; without it the container aborts at start.
PACKAGES = "systemd-sysv,openssh-server,python3,iproute2,ca-certificates"


def ensure_template(path: Path) -> Path:
    """Return the cached template, building it first when it is missing."""
    if path.is_file():
        return path
    build_template(path)
    return path


def ensure_base(template: Path, base: Path) -> None:
    """Unpack the template once, as the read-only layer under every container."""
    stamp = base.with_name(base.name + ".unpacked")
    want = f"{template.stat().st_mtime_ns} {template.stat().st_size}\n"
    if base.is_dir() and stamp.is_file() and stamp.read_text(encoding="utf-8") == want:
        return
    say(f"unpacking {template.name}")
    stamp.unlink(missing_ok=True)
    shutil.rmtree(base, ignore_errors=True)
    partial = base.with_name(base.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run(["tar", "--zstd", "-xpf", str(template), "-C", str(partial), "--numeric-owner"])
    partial.replace(base)
    stamp.write_text(want, encoding="utf-8")


def build_template(path: Path) -> None:
    """Build the template with debootstrap (about a minute) and pack it."""
    work = path.parent / "build"
    rootfs = work / "rootfs"
    shutil.rmtree(work, ignore_errors=True)
    rootfs.mkdir(parents=True)
    say(f"building the Debian 12 template from {MIRROR} (about a minute)")
    began = time.monotonic()
    try:
        run(
            ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE,
             str(rootfs), MIRROR],
            timeout=1200,
        )  # fmt: skip
        _trim(rootfs)
        packed = path.with_name(path.name + ".tmp")
        run(
            [
                "tar",
                "--zstd",
                "--numeric-owner",
                "-cf",
                str(packed),
                "-C",
                str(rootfs),
                ".",
            ]
        )
        packed.replace(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = path.stat().st_size / 1e6
    say(f"template {path.name} ready ({size:.0f} MB, {time.monotonic() - began:.0f} s)")


def _trim(rootfs: Path) -> None:
    """Drop what must not be shared between containers, and the package caches."""
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # As in Proxmox's templates: no package lists or caches (apt-get update first).
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin"):
        for leftover in rootfs.glob(pattern):
            leftover.unlink()
    for listing in (rootfs / "var/lib/apt/lists").glob("*"):
        if listing.is_file():
            listing.unlink()
    # Each container's systemd makes its own machine id at first boot.
    machine_id = rootfs / "etc/machine-id"
    if machine_id.exists():
        machine_id.write_text("", encoding="utf-8")
    (rootfs / "var/lib/dbus/machine-id").unlink(missing_ok=True)
