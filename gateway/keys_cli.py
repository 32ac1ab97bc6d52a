"""`casino-gateway keys ...`: the gateway's Ed25519 signing key -- create it, show it, export its
public half for the platform, and rotate it (through the running gateway's control socket, or in
a stopped gateway's outbox). Wired into gateway/cli.py by `add_commands`; docs/operations.md has
the rotation procedure and docs/outbox.md what keyRotated records."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.errors import EXIT_FAILURE, StoreError

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="the gateway's Ed25519 signing key",
                       description="Create, show, export and rotate the gateway's Ed25519 "
                       "signing key (the platform verifies every event with its public key).")
    keys = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = keys.add_parser("init", help="create a new private key file (mode 0600)",
                        description="Create a new private key file, mode 0600; refuses to "
                        "overwrite one (the platform knows this gateway by it).")
    _key_file(k)
    k.set_defaults(func=_init)
    k = keys.add_parser("show", help="print the key id and public key",
                        description="Print the key id (kid) and the public key of a private "
                        "key file.")
    _key_file(k)
    k.set_defaults(func=_show)
    k = keys.add_parser("export-public", help="write the public key for the platform",
                        description="Write the public key and its kid (one line, hex) for "
                        "the platform to register this gateway with.")
    _key_file(k)
    k.add_argument("--out", type=Path, default=None,
                   help="write to this file (default: standard output)")
    k.set_defaults(func=_export_public)
    k = keys.add_parser("rotate", help="replace the key, announcing the new one (running "
                        "or stopped gateway)", description=inspect.cleandoc(_rotate.__doc__ or ""),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--config", type=Path, default=None,
                   help="the gateway's configuration (key file, outbox, control socket)")
    k.add_argument("--key-file", type=Path, default=None,
                   help="without --config: the private key file (with --db, gateway stopped)")
    k.add_argument("--db", type=Path, default=None,
                   help="without --config: the outbox that records keyRotated")
    retired = k.add_mutually_exclusive_group()
    retired.add_argument("--archive-dir", type=Path, default=None,
                         help="where the retired private key goes (default: "
                         "STATE_DIR/retired-keys, outside /etc)")
    retired.add_argument("--destroy", action="store_true",
                         help="overwrite and delete the retired private key instead")
    k.set_defaults(func=_rotate)

def _key_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", type=Path, required=True, help="the private key file")


def _init(args: argparse.Namespace) -> int:
    from gateway.signing import write_signing_key

    path: Path = args.key_file
    if path.exists():
        print(f"{path} already exists; refusing to overwrite a signing key "
              f"(the platform knows this gateway by it)", file=sys.stderr)
        return EXIT_FAILURE
    signer = write_signing_key(path)
    print(f"created {path} (mode 0600)\nkid: {signer.kid}\n"
          f"public key: {bytes(signer.verify_key).hex()}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from gateway.signing import load_signing_key

    signer = load_signing_key(args.key_file)
    print(f"key file: {args.key_file}\nkid: {signer.kid}\n"
          f"public key: {bytes(signer.verify_key).hex()}")
    return 0


def _export_public(args: argparse.Namespace) -> int:
    from gateway.signing import load_signing_key

    signer = load_signing_key(args.key_file)
    text = f"{bytes(signer.verify_key).hex()} {signer.kid}\n"
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}; register it with the platform for this gateway")
    else:
        sys.stdout.write(text)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    """Rotate the signing key in one command, as root or as the service user:
      1. a new key is written to KEY.next (0600, owned like KEY: made by root, it is given to
         the key's owner), or taken from there if an earlier attempt was interrupted;
      2. keyRotated is recorded, signed by the current key and carrying the new public key (the
         platform learns the key from it): by the running gateway through its control socket,
         which signs with the new key from the next event on (no restart, no downtime), or,
         with the gateway stopped, in the outbox directly;
      3. KEY.next becomes KEY (an atomic rename) and the retired private key leaves the key
         directory: archived in STATE_DIR/retired-keys (--archive-dir) or destroyed (--destroy).
    Running it again finishes an interrupted rotation."""
    from gateway.signing import install_next_key, load_signing_key, retire_key_file

    where = _rotation_paths(args)
    if where is None:
        print("keys rotate needs --config FILE (or --key-file KEY and --db OUTBOX with the "
              "gateway stopped): the outbox records the keyRotated event that tells the "
              "platform about the new key", file=sys.stderr)
        return 2
    path, db, socket_path, archive = where
    archive = None if args.destroy else (args.archive_dir or archive)
    next_path = path.with_name(path.name + ".next")
    retired = path.with_name(path.name + ".retired")
    if retired.exists():  # left by an interrupted run: finish it first
        if retired.samefile(path):
            retired.unlink()
        else:
            retire_key_file(retired, archive)
    old = load_signing_key(path)
    new = _prepare_next_key(path, next_path)
    announced = _announce(db, socket_path, path, next_path, old, new)
    if announced is None:
        return EXIT_FAILURE
    seq, how = announced
    _owned_like_the_outbox(db)
    kept = retire_key_file(install_next_key(path, next_path), archive)
    recorded = (f"keyRotated (signed by the old key) was already recorded at seq {seq}"
                if how == "earlier" else
                f"keyRotated recorded at seq {seq} (signed by the old key) {how}")
    print(f"rotated {old.kid} -> {new.kid}\n{recorded}\n"
          + (f"old private key archived as {kept} (outside {path.parent}; delete it when no "
             f"export needs re-signing, or rotate with --destroy)\n" if kept else
             "old private key destroyed\n")
          + f"new public key: {bytes(new.verify_key).hex()}\nthe platform learns it from "
          f"keyRotated; to register it by hand: keys export-public --key-file {path}")
    return 0


def _rotation_paths(args: argparse.Namespace) -> tuple[Path, Path, Path | None, Path] | None:
    """(key file, outbox, control socket or None, default archive directory)."""
    from gateway.config import load_config
    from gateway.control import control_socket_path

    if args.config is not None:
        config = load_config(args.config)
        return (config.gateway.key_file, config.outbox_path,
                control_socket_path(config.gateway), config.gateway.state_dir / "retired-keys")
    if args.key_file is not None and args.db is not None:
        return args.key_file, args.db, None, args.db.resolve().parent / "retired-keys"
    return None


def _announce(db: Path, socket_path: Path | None, path: Path, next_path: Path, old: Any,
              new: Any) -> tuple[int | None, str] | None:
    """Record keyRotated (unless an interrupted run did): (seq, how), or None after saying
    why it cannot."""
    chain_kid = _chain_kid(db) or old.kid
    if chain_kid == new.kid:
        return _announced_at(db, new.kid), "earlier"
    if chain_kid != old.kid:
        print(f"casino-gateway: cannot rotate: the outbox {db} is signed by {chain_kid}, which "
              f"is neither {path} ({old.kid}) nor {next_path} ({new.kid})", file=sys.stderr)
        return None
    answer = _ask_running_gateway(socket_path) if socket_path is not None else None
    if answer is not None and not answer.get("ok"):
        print(f"casino-gateway: cannot rotate: the running gateway says: {answer['error']}",
              file=sys.stderr)
        return None
    if answer is not None:
        return answer["rotated"]["seq"], "by the running gateway, which signs with the new " \
            "key from the next event on: no restart needed"
    seq = _record_offline(db, old, new)
    if seq is None:
        return None
    return seq, "in the outbox (the gateway was stopped): start it again"


def _prepare_next_key(path: Path, next_path: Path) -> Any:
    """KEY.next, made now or by an interrupted run, owned like KEY (root makes it for the
    key's owner: the gateway must read it, and a root-owned key stopped the next start)."""
    from gateway.signing import load_signing_key, write_signing_key

    new = load_signing_key(next_path) if next_path.exists() else write_signing_key(next_path)
    owner = path.stat()
    if os.geteuid() == 0:
        os.chown(next_path, owner.st_uid, owner.st_gid)
    return new


def _chain_kid(db: Path) -> str | None:
    """The key the outbox's chain is signed with now (None: no outbox or no event yet)."""
    from gateway.outbox import readers

    if not db.exists():
        return None
    conn = readers.open_db(db)
    try:
        return readers.chain_kid(conn)
    finally:
        conn.close()


def _owned_like_the_outbox(db: Path) -> None:
    """Run as root, opening the outbox can leave root-owned -wal/-shm files the service user
    then cannot open: give them to the outbox's owner."""
    if os.geteuid() != 0 or not db.exists():
        return
    st = db.stat()
    for side in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if side.exists():
            os.chown(side, st.st_uid, st.st_gid)


def _announced_at(db: Path, kid: str) -> int | None:
    """The seq of the keyRotated event that announced `kid`."""
    from gateway.outbox import readers

    conn = readers.open_db(db)
    try:
        for seq, env in readers.iter_key_rotations(conn, newest_first=True):
            if (env.get("data") or {}).get("new_kid") == kid:
                return seq
    finally:
        conn.close()
    return None


def _ask_running_gateway(socket_path: Path) -> dict[str, Any] | None:
    """The control socket's answer to rotate-key, or None when no gateway serves it."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    with sock:
        sock.sendall(b'{"cmd": "rotate-key"}\n')
        reply = b""
        while not reply.endswith(b"\n"):
            data = sock.recv(65536)
            if not data:
                raise StoreError(f"the gateway at {socket_path} closed the control socket "
                                 "without answering the rotation")
            reply += data
    return json.loads(reply)


def _record_offline(db: Path, old: Any, new: Any) -> int | None:
    """Record keyRotated in a stopped gateway's outbox (its lock refuses a running one)."""
    import trio

    from gateway.outbox import Outbox, OutboxSettings, readers
    from gateway.signing import decode_envelope

    conn = readers.open_readonly(db)
    try:
        meta = readers.read_meta(conn)
        last = readers.last_event(conn)
    finally:
        conn.close()
    last_env = decode_envelope(last[1]) if last else {}
    settings = OutboxSettings(path=db, gateway_id=meta["gateway_id"],
                              venue=last_env.get("venue", ""),
                              region=last_env.get("region", ""), min_free_mb=0)
    try:
        outbox = Outbox.open(settings, old)
    except StoreError as err:
        print(f"casino-gateway: cannot rotate: {err}\n(rotate through the running gateway with "
              f"--config FILE, or stop the gateway first, e.g. systemctl stop casino-gateway)",
              file=sys.stderr)
        return None

    async def record() -> int:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(outbox.run_writer)
                committed = await outbox.rotate_key(new)
                nursery.cancel_scope.cancel()
        return committed

    try:
        return trio.run(record)
    finally:
        outbox.close()
