"""Issue 18, packaging: one version source, a constraints file pinning the tested dependency set,
and the Debian package (`make deb`): its contents and maintainer scripts."""

from __future__ import annotations

import configparser
import importlib.metadata as md
import re
import subprocess
from pathlib import Path

from packaging.requirements import Requirement

import gateway
from tests.debpkg import build_deb, need_dpkg

ROOT = Path(__file__).resolve().parent.parent


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[_norm(name)] = version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_version_is_set_in_one_place():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: gateway.__version__"
    assert md.version("casino-edge-gateway") == gateway.__version__
    elsewhere = [p for p in (ROOT / "pyproject.toml", ROOT / "packaging" / "build-deb")
                 if re.search(r"\b\d+\.\d+\.\d+\b", p.read_text())]
    assert not elsewhere, f"a version number is written in {elsewhere}"


def _closure(requirement_names: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, recursively (as installed here)."""
    seen: set[str] = set()
    todo = list(requirement_names)
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        for sub in md.requires(req.name) or []:
            subreq = Requirement(sub)
            if subreq.marker is None or subreq.marker.evaluate({"extra": ""}):
                todo.append(subreq)
    return seen


def test_every_source_folder_is_a_package_the_wheel_includes():
    """`packages = find:` skips folders without __init__.py; an editable install still imports
    them as namespace packages, so only the installed wheel or deb would miss them."""
    folders = {p.parent for top in ("gateway", "drivers") for p in (ROOT / top).rglob("*.py")}
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert missing == []


def test_constraints_pin_every_dependency_to_the_tested_version():
    pins = _constraints()
    top = [Requirement(r) for r in md.requires("casino-edge-gateway") or []]
    wanted = _closure([r for r in top if r.marker is None
                       or any(r.marker.evaluate({"extra": e}) for e in ("", "test", "dev"))])
    wanted.discard("casino-edge-gateway")
    missing = sorted(wanted - pins.keys())
    assert not missing, f"constraints.txt does not pin {missing}: run make constraints"
    # The pins are the set the tests run with, and satisfy what setup.cfg asks for.
    for name in wanted:
        assert md.version(name) == pins[name], (name, md.version(name), pins[name])
    for req in top:
        assert req.specifier.contains(pins[_norm(req.name)]), (req, pins[_norm(req.name)])
    assert "casino-edge-gateway" not in pins


def test_every_install_path_uses_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    install_lines = [line for line in makefile.splitlines() if "pip install" in line
                     and "-e ." in line.replace("'", "")]
    assert install_lines and all("-c constraints.txt" in line for line in install_lines)
    assert re.search(r"^constraints:", makefile, re.M)
    assert "-c" in (ROOT / "packaging" / "build-deb").read_text()


# -- the Debian package -------------------------------------------------------------------------

def _deb_listing(deb: Path) -> dict[str, str]:
    """path -> the `dpkg-deb -c` line (mode, owner, size, ...)."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[5].removeprefix("."): line for line in out.splitlines()}


def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def _control_file(deb: Path, name: str, tmp_path: Path) -> str:
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "DEBIAN")], check=True)
    return (tmp_path / "DEBIAN" / name).read_text()


def test_deb_installs_the_bundled_application_unit_config_and_docs(tmp_path):
    need_dpkg()
    deb = build_deb()
    assert deb.name == f"casino-gateway_{gateway.__version__}_{_deb_field(deb, 'Architecture')}.deb"
    assert _deb_field(deb, "Version") == gateway.__version__
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert script in info
    files = _deb_listing(deb)
    # The unit's ExecStart, in a venv of its own; every pinned runtime dependency inside it.
    assert files["/opt/casino-gateway/bin/casino-gateway"].startswith("-rwxr-xr-x root/root")
    assert "/lib/systemd/system/casino-gateway.service" in files
    assert "/usr/share/doc/casino-gateway/operations.md" in files
    assert "/usr/share/doc/casino-gateway/examples/gateway.example.toml" in files
    assert "-> /opt/casino-gateway/bin/casino-gateway" in files["/usr/bin/casino-gateway"]
    site = "/opt/casino-gateway/lib/python3.11/site-packages/"
    installed = {p[len(site):].split("/")[0].lower() for p in files if p.startswith(site)}
    for name, version in _constraints().items():
        if name in {"trio", "pynacl", "msgpack", "structlog", "trio-websocket"}:
            assert f"{name.replace('-', '_')}-{version}.dist-info" in installed, name
    # Nothing to pip at install time (and no pip to drift the pinned set afterwards).
    assert not any("/site-packages/pip/" in p for p in files)
    postinst = _control_file(deb, "postinst", tmp_path)
    assert not [line for line in postinst.splitlines()
                if re.search(r"\bpip\b", line.split("#")[0])]
    # The Python the venv links to is a dependency.
    depends = _deb_field(deb, "Depends")
    assert "python3.11" in depends and "sqlite3" in depends


def test_deb_keeps_config_on_upgrade_and_the_outbox_on_purge(tmp_path):
    need_dpkg()
    deb = build_deb()
    files = _deb_listing(deb)
    assert _control_file(deb, "conffiles", tmp_path).split() == ["/etc/casino-gateway/gateway.toml"]
    assert files["/etc/casino-gateway/gateway.toml"].startswith("-rw-r----- root/root")
    scripts = {name: (tmp_path / "DEBIAN" / name).read_text()
               for name in ("postinst", "prerm", "postrm")}
    for name, text in scripts.items():
        subprocess.run(["sh", "-n", str(tmp_path / "DEBIAN" / name)], check=True)
        assert text.startswith("#!/bin/sh") and "set -e" in text, name
    post = scripts["postinst"]
    assert "useradd --system --gid casino-gateway" in post
    assert "install -d -m 0750 -o root -g casino-gateway /etc/casino-gateway" in post
    assert "install -d -m 0700 -o casino-gateway -g casino-gateway /etc/casino-gateway/keys" in post
    assert "install -d -m 0750 -o casino-gateway -g casino-gateway /var/lib/casino-gateway" in post
    # Purge removes /etc but the keys, and the state directory only when asked.
    purge = scripts["postrm"]
    assert "! -name keys" in purge
    assert 'if [ "${CASINO_GATEWAY_PURGE_DATA:-no}" = yes ]' in purge
    assert purge.count("/var/lib/casino-gateway") >= 1 and "rm -rf /var/lib" in purge
