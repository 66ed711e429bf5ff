"""Packaging a release: the artifact, its manifest, and checks on load."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from psa_infra.release import ReleaseError, checksum_list, load_artifact, package


def _app(tmp_path: Path) -> Path:
    """A small app folder shaped like app/, whose "build" the fake runner does."""
    app = tmp_path / "app"
    for name, port in (("api-gateway", 3000), ("auth", 3010)):
        service = app / "services" / name
        (service / "src").mkdir(parents=True)
        (service / "src" / "index.ts").write_text("export {};\n")
        (service / "package.json").write_text(
            json.dumps({"name": f"@psa/{name}", "psa": {"port": port}})
        )
    (app / "package.json").write_text(
        json.dumps(
            {"name": "psa-platform", "version": "1.2.3", "engines": {"node": ">=18"}}
        )
    )
    (app / "node_modules" / "left-out").mkdir(parents=True)
    (app / "test").mkdir()
    (app / "test" / "x.test.js").write_text("")
    return app


def _fake_npm(calls: list[list[str]]):  # type: ignore[no-untyped-def]
    def run(command: Sequence[str], cwd: Path) -> None:
        calls.append(list(command))
        if command[:3] == ["npm", "run", "build"]:
            for service in (cwd / "services").iterdir():
                (service / "dist").mkdir()
                (service / "dist" / "index.js").write_text(f"// {service.name}\n")
            modules = cwd / "node_modules" / "@psa"
            modules.mkdir(parents=True)
            (modules / "auth").symlink_to("../../services/auth")

    return run


def test_package_writes_archive_and_manifest(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    app = _app(tmp_path)
    artifact = package(app, tmp_path / "out", runner=_fake_npm(calls))
    assert [c[:3] for c in calls] == [
        ["npm", "ci", "--no-audit"],
        ["npm", "run", "build"],
        ["npm", "prune", "--omit=dev"],
    ]
    assert artifact.archive.name == "psa-app-1.2.3.tar.gz"
    manifest = json.loads(artifact.manifest_path.read_text())
    assert manifest["version"] == "1.2.3"
    assert manifest["node_engine"] == ">=18"
    assert manifest["services"] == {
        "api-gateway": {"port": 3000, "entry": "services/api-gateway/dist/index.js"},
        "auth": {"port": 3010, "entry": "services/auth/dist/index.js"},
    }
    digest = hashlib.sha256(artifact.archive.read_bytes()).hexdigest()
    assert manifest["artifact_sha256"] == digest
    with tarfile.open(artifact.archive) as tar:
        names = set(tar.getnames())
        link = tar.getmember("node_modules/@psa/auth")
    assert "services/auth/dist/index.js" in names
    assert "psa-release.json" in names
    assert not any(n.startswith(("test", "services/auth/src")) for n in names)
    assert "node_modules/left-out" not in names
    assert link.issym() and link.linkname == "../../services/auth"
    assert set(manifest["files"]) == {
        n
        for n in names
        if n not in ("psa-release.json",) and "." in n.rsplit("/", 1)[-1]
    } - {"node_modules/@psa/auth"}
    assert (app / "node_modules" / "left-out").exists(), "the source tree is untouched"
    assert not (app / "services" / "auth" / "dist").exists()
    for line in checksum_list(artifact).splitlines():
        digest, name = line.split("  ./")
        assert manifest["files"][name] == digest


def test_package_is_reproducible(tmp_path: Path) -> None:
    first = package(_app(tmp_path / "a"), tmp_path / "one", runner=_fake_npm([]))
    second = package(_app(tmp_path / "b"), tmp_path / "two", runner=_fake_npm([]))
    assert first.sha256 == second.sha256


def test_a_version_is_packaged_once(tmp_path: Path) -> None:
    app = _app(tmp_path)
    package(app, tmp_path / "out", runner=_fake_npm([]))
    with pytest.raises(ReleaseError) as caught:
        package(app, tmp_path / "out", runner=_fake_npm([]))
    assert (
        caught.value.message
        == f"release 1.2.3 is already packaged in {tmp_path / 'out'}"
    )
    other = package(app, tmp_path / "out", version="1.2.4", runner=_fake_npm([]))
    assert other.version == "1.2.4"


@pytest.mark.parametrize("version", ["../x", "", "a b", "-rf"])
def test_bad_versions_are_refused(tmp_path: Path, version: str) -> None:
    with pytest.raises(ReleaseError, match="is not a release version"):
        package(
            _app(tmp_path),
            tmp_path / "out",
            version=version or " ",
            runner=_fake_npm([]),
        )


def test_a_changed_archive_is_refused(tmp_path: Path) -> None:
    artifact = package(_app(tmp_path), tmp_path / "out", runner=_fake_npm([]))
    assert load_artifact(artifact.archive).version == "1.2.3"
    assert load_artifact(artifact.manifest_path).sha256 == artifact.sha256
    with open(artifact.archive, "ab") as handle:
        handle.write(b"x")
    with pytest.raises(ReleaseError, match="does not match its manifest"):
        load_artifact(artifact.archive)


def test_a_failed_build_says_what_failed(tmp_path: Path) -> None:
    def failing(command: Sequence[str], cwd: Path) -> None:
        from psa_infra.release import _npm

        _npm(["sh", "-c", "echo 'TS2304: cannot find name' >&2; exit 2"], cwd)

    with pytest.raises(ReleaseError) as caught:
        package(_app(tmp_path), tmp_path / "out", runner=failing)
    assert "failed with exit code 2" in caught.value.message
    assert "TS2304" in caught.value.message
    assert not (tmp_path / "out" / "psa-app-1.2.3.tar.gz").exists()
