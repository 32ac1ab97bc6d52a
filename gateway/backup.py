"""`casino-gateway backup` and `restore`: everything a new box needs to carry on as this gateway.

A backup is a directory: the outbox and the commands store (consistent online copies, SQLite's
backup API, while the gateway runs), the poll journals, the configuration, the public key, a
`manifest.json` with a SHA-256 per file, and the private key only when asked
(`--include-private-key`). Every file is 0600 and, run as root, owned by the service user (the
owner of the state directory). `restore` checks the manifest, refuses while a gateway holds the
outbox, never overwrites an outbox (`--replace` moves it aside) and restores only the files named
in the manifest -- never a witness of the highest seq the box committed, which is how a gateway
restored behind the platform knows to start a new epoch (docs/operations.md section 6)."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import EXIT_FAILURE, StoreError

__all__ = ["FORMAT", "add_commands", "make_backup", "restore_backup"]

FORMAT = "casino-gateway-backup/1"
MANIFEST = "manifest.json"
OUTBOX, COMMANDS, CONFIG = "outbox.db", "commands.db", "gateway.toml"
PUBLIC, PRIVATE = "gateway-public.txt", "signing.key"
SERVICE_USER = "casino-gateway"


@dataclass(frozen=True, slots=True)
class Places:
    """Where a gateway keeps what a backup holds (from its configuration)."""

    config: Path
    state_dir: Path
    outbox: Path
    key_file: Path
    gateway_id: str

    @property
    def commands(self) -> Path:
        return self.state_dir / "commands.db"

    @property
    def polls(self) -> Path:
        return self.state_dir / "polls"


def _places(config_path: Path, state_dir: Path | None = None) -> Places:
    from gateway.config import load_config

    config = load_config(config_path)
    if state_dir is not None:  # another directory (a restore drill): everything goes there
        return Places(config_path, state_dir, state_dir / "outbox.db", config.gateway.key_file,
                      config.gateway.id)
    return Places(config_path, config.gateway.state_dir, config.outbox_path,
                  config.gateway.key_file, config.gateway.id)


def _service_user() -> tuple[int, int]:
    """The casino-gateway user and group (the package makes them), else whoever runs this."""
    try:
        entry = pwd.getpwnam(SERVICE_USER)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return os.geteuid(), os.getegid()


def _owner(state_dir: Path) -> tuple[int, int]:
    """Who owns what is restored: the state directory's owner (the service user)."""
    try:
        st = state_dir.stat()
        return st.st_uid, st.st_gid
    except FileNotFoundError:
        return _service_user()


def _own(path: Path, owner: tuple[int, int], mode: int = 0o600) -> None:
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, *owner)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(target: Path, text: str) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _copy_file(source: Path, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)
        out.flush()
        os.fsync(out.fileno())


# -- backup -----------------------------------------------------------------------------------

def _outbox_figures(path: Path) -> dict[str, Any]:
    from gateway.outbox import open_readonly, outbox_figures

    conn = open_readonly(path)
    try:
        return outbox_figures(conn)
    finally:
        conn.close()


def make_backup(places: Places, to: Path, *, include_private_key: bool = False
                ) -> dict[str, Any]:
    """Write a backup of the gateway at `places` into the directory `to` (made 0700, and it must
    hold no backup yet). Returns the manifest."""
    from gateway import __version__
    from gateway.outbox.copy import online_copy
    from gateway.signing import load_signing_key

    if not places.outbox.exists():
        raise StoreError(f"no outbox at {places.outbox}: nothing to back up")
    if (to / MANIFEST).exists():
        raise StoreError(f"{to} already holds a backup; give a new directory")
    owner = _owner(places.state_dir)
    to.mkdir(parents=True, exist_ok=True, mode=0o700)
    _own(to, owner, 0o700)
    online_copy(places.outbox, to / OUTBOX)
    names = [OUTBOX]
    if places.commands.exists():
        online_copy(places.commands, to / COMMANDS)
        names.append(COMMANDS)
    for journal in sorted(places.polls.glob("*.journal")):
        (to / "polls").mkdir(exist_ok=True, mode=0o700)
        _own(to / "polls", owner, 0o700)
        _copy_file(journal, to / "polls" / journal.name)
        names.append(f"polls/{journal.name}")
    _copy_file(places.config, to / CONFIG)
    signer = load_signing_key(places.key_file)
    _write(to / PUBLIC, f"{bytes(signer.verify_key).hex()} {signer.kid}\n")
    names.append(CONFIG)
    names.append(PUBLIC)
    if include_private_key:
        _copy_file(places.key_file, to / PRIVATE)
        names.append(PRIVATE)
    for name in names:
        _own(to / name, owner)
    manifest = {
        "format": FORMAT, "gateway_id": places.gateway_id, "version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "kid": signer.kid, "outbox": _outbox_figures(to / OUTBOX),
        "private_key_included": include_private_key,
        "files": {name: _sha256(to / name) for name in names},
    }
    _write(to / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _own(to / MANIFEST, owner)
    return manifest


# -- restore ----------------------------------------------------------------------------------

def read_manifest(source: Path) -> dict[str, Any]:
    """The backup's manifest, once every file it names matches its SHA-256."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise StoreError(f"{source} is not a casino-gateway backup ({MANIFEST}: {err})") from None
    if manifest.get("format") != FORMAT:
        raise StoreError(f"{source}: unknown backup format {manifest.get('format')!r}")
    for name, digest in manifest["files"].items():
        path = source / name
        if not path.is_file() or _sha256(path) != digest:
            raise StoreError(f"{source}: {name} is missing or does not match the manifest; "
                             "the backup is damaged")
    return manifest


def _check_restorable(manifest: dict[str, Any], places: Places) -> None:
    from gateway.outbox.migrations import SCHEMA_VERSION

    if manifest["gateway_id"] != places.gateway_id:
        raise StoreError(f"the backup is of gateway {manifest['gateway_id']!r} but "
                         f"{places.config} configures {places.gateway_id!r}")
    if manifest["outbox"]["schema"] > SCHEMA_VERSION:
        raise StoreError(f"the backup's outbox has schema version {manifest['outbox']['schema']},"
                         f" newer than this release knows ({SCHEMA_VERSION}): restore it with "
                         f"casino-gateway {manifest['version']} or newer")


def _move_aside(path: Path, stamp: str) -> Path | None:
    """An existing database (with its -wal and -shm, which belong to it) moves aside, never
    deleted: a stale -wal beside a restored file would be replayed into it."""
    if not path.exists():
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        return None
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    return aside


def _place(source: Path, target: Path, owner: tuple[int, int]) -> None:
    """Copy into a temporary file beside `target`, fsync, then rename over it: all or nothing."""
    partial = target.with_name(f".{target.name}.restoring")
    _copy_file(source, partial)
    _own(partial, owner)
    os.replace(partial, target)


def install_config(source: Path, config: Path) -> str:
    """Put the backup's configuration at `config` (an existing file is kept, renamed); mode
    0640, group of the service user when root (the package's layout)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = ""
    if config.exists():
        aside = config.with_name(f"{config.name}.before-restore-{stamp}")
        os.replace(config, aside)
        kept = f" (the previous one is {aside})"
    config.parent.mkdir(parents=True, exist_ok=True)
    _place(source / CONFIG, config, (0, _service_user()[1]))  # root:casino-gateway
    os.chmod(config, 0o640)
    return f"installed the backup's configuration as {config}{kept}"


def restore_backup(source: Path, places: Places, *, replace: bool = False) -> list[str]:
    """Restore the backup in `source` for the gateway at `places`; returns what was done, one
    line each. Refuses while a gateway holds the outbox, and over an outbox unless `replace`."""
    from gateway.outbox.schema import lock

    manifest = read_manifest(source)
    _check_restorable(manifest, places)
    owner = _owner(places.state_dir)
    places.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    places.outbox.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    lock_fd = lock(places.outbox)  # "in use by another process": stop the gateway first
    try:
        # Made by root, the lock file would keep the service user's gateway from starting.
        _own(places.outbox.with_name(places.outbox.name + ".lock"), owner)
        if places.outbox.exists() and not replace:
            raise StoreError(f"{places.outbox} exists; restore never overwrites an outbox: stop "
                             "the gateway and give --replace to move it aside (kept, renamed)")
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        done = _restore_files(source, manifest, places, owner, stamp)
    finally:
        os.close(lock_fd)
    return done + _restore_key(source, manifest, places, owner)


def _restore_files(source: Path, manifest: dict[str, Any], places: Places,
                   owner: tuple[int, int], stamp: str) -> list[str]:
    done = []
    for name, target in ((OUTBOX, places.outbox), (COMMANDS, places.commands)):
        if name not in manifest["files"]:
            continue
        aside = _move_aside(target, stamp)
        if aside is not None:
            done.append(f"moved the existing {target.name} aside to {aside}")
        _place(source / name, target, owner)
    journals = [name for name in manifest["files"] if name.startswith("polls/")]
    if journals:
        places.polls.mkdir(exist_ok=True, mode=0o750)
        for name in journals:
            _place(source / name, places.state_dir / name, owner)
    figures = manifest["outbox"]
    done.append(f"restored the outbox of {manifest['gateway_id']} (epoch {figures['epoch']}, "
                f"events up to seq {figures['events']}, delivered up to seq "
                f"{figures['delivered_seq']}), the commands store and {len(journals)} poll "
                f"journal(s) into {places.state_dir}, owned by uid {owner[0]}, mode 0600")
    return done


def _restore_key(source: Path, manifest: dict[str, Any], places: Places,
                 owner: tuple[int, int]) -> list[str]:
    if places.key_file.exists():
        return []
    if PRIVATE in manifest["files"]:
        places.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _place(source / PRIVATE, places.key_file, owner)
        return [f"installed the private key {manifest['kid']} as {places.key_file}"]
    return [f"NOTE: no signing key at {places.key_file} and none in the backup: put the old "
            f"box's key ({manifest['kid']}) there before starting; the chain continues only "
            f"with it"]


# -- the commands -----------------------------------------------------------------------------

AHEAD = ("If the platform holds events of this gateway after seq {seq} (it is ahead of this "
         "backup), the gateway starts a new epoch when it next connects, and a loss marker "
         "names the events the backup does not have: no seq is ever sent twice.")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("backup", help="back up the outbox, state, configuration and public key",
                       description="Copy, while the gateway runs, what a new box needs to "
                       "carry on as this gateway: the outbox and the commands store (SQLite's "
                       "online backup), the poll journals, the configuration and the public "
                       "key, with a manifest of SHA-256 sums; files 0600, owned by the service "
                       "user. The private key only with --include-private-key.")
    p.add_argument("--config", type=Path, required=True, help="the gateway's configuration")
    p.add_argument("--to", type=Path, required=True,
                   help="a new directory for the backup (made 0700)")
    p.add_argument("--include-private-key", action="store_true",
                   help="also copy the signing key (keep such a backup as secret as the key)")
    p.set_defaults(func=_cmd_backup)
    p = sub.add_parser("restore", help="restore a backup (gateway stopped)",
                       description="Restore a backup made by casino-gateway backup, on this box "
                       "or a new one, with the gateway stopped. Checks every file against the "
                       "manifest; never overwrites an outbox (--replace moves it aside); "
                       "installs the backup's configuration when --config names no file yet "
                       "(or with --config-from-backup) and its private key if it holds one and "
                       "the key file is missing. " + AHEAD.format(seq="N"))
    p.add_argument("--config", type=Path, required=True,
                   help="the configuration to restore for (installed from the backup if absent)")
    p.add_argument("--from", dest="source", type=Path, required=True,
                   help="the backup directory")
    p.add_argument("--replace", action="store_true",
                   help="move an existing outbox and commands store aside (renamed, kept)")
    p.add_argument("--config-from-backup", action="store_true",
                   help="install the backup's configuration over --config (the old one kept)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="restore into this directory instead of the configuration's state "
                   "directory (a restore drill)")
    p.set_defaults(func=_cmd_restore)


def _cmd_backup(args: argparse.Namespace) -> int:
    manifest = make_backup(_places(args.config), args.to,
                           include_private_key=args.include_private_key)
    figures = manifest["outbox"]
    print(f"backed up {manifest['gateway_id']} to {args.to}: outbox epoch {figures['epoch']} "
          f"up to seq {figures['events']}, {len(manifest['files'])} files"
          + (" (with the private key: keep it secret)" if manifest["private_key_included"]
             else " (public key only)"))
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.source)
    done = []
    if args.config_from_backup or not args.config.exists():
        done.append(install_config(args.source, args.config))
    try:
        lines = restore_backup(args.source, _places(args.config, args.state_dir),
                               replace=args.replace)
    except StoreError as err:
        for line in done:
            print(line, file=sys.stderr)
        print(f"casino-gateway: cannot restore: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print("\n".join(done + lines))
    print(AHEAD.format(seq=manifest["outbox"]["events"]))
    return 0
