"""Package the app once into a versioned release artifact.

``psa-infra package`` builds the Node.js services on the build machine
(``npm ci``, ``npm run build``, ``npm prune --omit=dev``) in a copy of the app
folder, so the source tree is left as it was, and writes two files:

- ``psa-app-<version>.tar.gz``: the built app with its production
  dependencies; the containers need no package registry to install it;
- ``psa-app-<version>.manifest.json``: version, services and their default
  ports, the Node engine, the artifact's SHA-256 and the SHA-256 of every file.

The archive is reproducible for the same build output: entries are sorted,
owned by root and dated by the version's fixed timestamp.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PsaInfraError

log = logging.getLogger(__name__)

MANIFEST_NAME = "psa-release.json"
FORMAT_VERSION = 1
_VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
# Left out of the copy that is built, and of the artifact.
_SKIP = {"node_modules", "dist", ".git", "test"}
# Sources are not needed at run time once built.
_DROP_AFTER_BUILD = (
    "src",
    "tsconfig.json",
    "tsconfig.base.json",
    "tsconfig.tsbuildinfo",
)

Runner = Callable[[Sequence[str], Path], None]


class ReleaseError(PsaInfraError):
    """The app could not be packaged, or an artifact is not valid."""


@dataclass(frozen=True)
class Artifact:
    """A packaged release: the archive and its manifest."""

    version: str
    archive: Path
    manifest_path: Path
    manifest: dict[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.manifest["artifact_sha256"])

    @property
    def services(self) -> dict[str, Any]:
        return dict(self.manifest["services"])


def _npm(command: Sequence[str], cwd: Path) -> None:
    log.info("build: %s", " ".join(command))
    try:
        done = subprocess.run(
            list(command), cwd=cwd, capture_output=True, text=True, timeout=1200
        )
    except FileNotFoundError:
        raise ReleaseError(
            f"{command[0]} is not installed on this machine",
            hint="the build machine needs Node.js 18+ and npm",
        ) from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise ReleaseError(
            f"'{' '.join(command)}' failed with exit code {done.returncode}:\n{tail}"
        )


def _app_version(app_dir: Path) -> tuple[dict[str, Any], str]:
    try:
        data = json.loads((app_dir / "package.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReleaseError(
            f"{app_dir} has no package.json: not a Node.js app folder",
            hint="pass the folder holding the app's package.json (default: app/)",
        ) from None
    except json.JSONDecodeError as exc:
        raise ReleaseError(
            f"{app_dir}/package.json line {exc.lineno}: {exc.msg}"
        ) from None
    return data, str(data.get("version", ""))


def _services(build: Path) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for package in sorted((build / "services").glob("*/package.json")):
        data = json.loads(package.read_text(encoding="utf-8"))
        name = package.parent.name
        entry = package.parent / "dist" / "index.js"
        if not entry.is_file():
            raise ReleaseError(f"service {name} has no dist/index.js after the build")
        services[name] = {
            "port": (data.get("psa") or {}).get("port"),
            "entry": f"services/{name}/dist/index.js",
        }
    if not services:
        raise ReleaseError(f"no services under {build / 'services'}")
    return services


def _file_sums(build: Path) -> tuple[dict[str, str], dict[str, str]]:
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    for path in sorted(build.rglob("*")):
        name = path.relative_to(build).as_posix()
        if path.is_symlink():
            links[name] = os.readlink(path)
        elif path.is_file():
            files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files, links


def _tar(build: Path, archive: Path) -> None:
    """Write a reproducible gzip tarball of the contents of ``build``."""

    def normal(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(build.rglob("*")):
            name = path.relative_to(build).as_posix()
            tar.add(path, arcname=name, recursive=False, filter=normal)
    with (
        open(archive, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    ):
        gz.write(buffer.getvalue())


def package(
    app_dir: Path, out: Path, version: str | None = None, runner: Runner = _npm
) -> Artifact:
    """Build the app in a scratch copy and write the artifact into ``out``."""
    data, declared = _app_version(app_dir)
    version = version or declared
    if not _VERSION.match(version or ""):
        raise ReleaseError(
            f"'{version}' is not a release version (letters, digits, . + _ -)",
            hint='set "version" in the app\'s package.json, or pass --version',
        )
    archive = out / f"psa-app-{version}.tar.gz"
    manifest_path = out / f"psa-app-{version}.manifest.json"
    if archive.exists() or manifest_path.exists():
        raise ReleaseError(
            f"release {version} is already packaged in {out}",
            hint="releases never change once made: bump the version or pass --version",
        )
    with tempfile.TemporaryDirectory(prefix="psa-build-") as scratch:
        build = Path(scratch) / "app"
        shutil.copytree(
            app_dir,
            build,
            symlinks=True,
            ignore=lambda _dir, names: [
                n for n in names if n in _SKIP or n.endswith(".tsbuildinfo")
            ],
        )
        runner(["npm", "ci", "--no-audit", "--no-fund"], build)
        runner(["npm", "run", "build"], build)
        runner(["npm", "prune", "--omit=dev", "--no-audit", "--no-fund"], build)
        services = _services(build)
        for pattern in _DROP_AFTER_BUILD:
            for path in sorted(build.rglob(pattern), reverse=True):
                if "node_modules" in path.parts:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        files, links = _file_sums(build)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": data.get("name", "psa-app"),
            "version": version,
            "node_engine": (data.get("engines") or {}).get("node", ""),
            "services": services,
            "files": files,
            "links": links,
        }
        (build / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(".partial")
        _tar(build, partial)
    manifest["artifact"] = archive.name
    manifest["artifact_sha256"] = hashlib.sha256(partial.read_bytes()).hexdigest()
    partial.replace(archive)
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return Artifact(version, archive, manifest_path, manifest)


def load_artifact(path: Path) -> Artifact:
    """Read an artifact given as its archive or its manifest, and check it."""
    name = path.name
    if name.endswith(".manifest.json"):
        manifest_path = path
        archive = path.with_name(name.removesuffix(".manifest.json") + ".tar.gz")
    elif name.endswith(".tar.gz"):
        archive = path
        manifest_path = path.with_name(name.removesuffix(".tar.gz") + ".manifest.json")
    else:
        raise ReleaseError(
            f"{path} is not a release artifact (psa-app-VERSION.tar.gz)",
            hint="make one with: psa-infra package app --out DIR",
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReleaseError(f"{manifest_path} is missing next to {archive}") from None
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{manifest_path} line {exc.lineno}: {exc.msg}") from None
    if not archive.is_file():
        raise ReleaseError(f"{archive} is missing next to {manifest_path}")
    if (
        manifest.get("format_version") != FORMAT_VERSION
        or "artifact_sha256" not in manifest
    ):
        raise ReleaseError(f"{manifest_path} is not a psa-infra release manifest")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != manifest["artifact_sha256"]:
        raise ReleaseError(
            f"{archive} does not match its manifest (sha256 {digest[:12]}..., "
            f"expected {str(manifest['artifact_sha256'])[:12]}...)",
            hint="the file is damaged or was changed: package the release again",
        )
    return Artifact(str(manifest["version"]), archive, manifest_path, manifest)


def checksum_list(artifact: Artifact) -> str:
    """The manifest's file sums in ``sha256sum -c`` format."""
    return "".join(
        f"{digest}  ./{name}\n"
        for name, digest in sorted(artifact.manifest["files"].items())
    )
