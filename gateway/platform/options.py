"""Command-line options naming a NATS cluster, shared by `receiver run --jetstream` and the
`platform` commands. No nats import here: the receiver's CLI loads without the extra."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_nats_options", "nats_settings"]


def _servers(value: str) -> tuple[str, ...]:
    servers = tuple(part.strip() for part in value.split(",") if part.strip())
    for server in servers:
        if not server.startswith(("nats://", "tls://")):
            raise argparse.ArgumentTypeError(f"expected nats:// or tls:// URLs, got {server!r}")
    if not servers:
        raise argparse.ArgumentTypeError("expected at least one NATS URL")
    return servers


def add_nats_options(parser: argparse.ArgumentParser, *, flag: str = "--nats",
                     required: bool = True) -> None:
    parser.add_argument(flag, dest="nats", type=_servers, required=required,
                        metavar="URL[,URL...]", help="NATS servers of the JetStream cluster")
    parser.add_argument("--nats-creds", type=Path, metavar="FILE",
                        help="NATS user credentials (JWT and nkey seed), mode 0600")
    parser.add_argument("--nats-nkey", type=Path, metavar="FILE",
                        help="NATS nkey seed file, mode 0600")
    parser.add_argument("--nats-ca", type=Path, metavar="FILE", help="CA of the NATS servers (TLS)")
    parser.add_argument("--nats-cert", type=Path, metavar="FILE", help="client certificate (TLS)")
    parser.add_argument("--nats-key", type=Path, metavar="FILE", help="client key (TLS)")
    parser.add_argument("--nats-connect-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="give up on the first connection after this long (exit 78; "
                             "later reconnections never give up; default 15)")
    parser.add_argument("--nats-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="wait this long for a batch's acks before publishing it again "
                             "(3 attempts, then close 1011: the gateway retries; default 10)")


def nats_settings(args: argparse.Namespace, name: str) -> Any:
    """NatsSettings from the options; raises ValueError with a one-line reason (exit 78)."""
    from gateway.platform.store import NatsSettings

    for path in (args.nats_creds, args.nats_nkey, args.nats_key):
        if path is None:
            continue
        try:
            mode = path.stat().st_mode
        except OSError as err:
            raise ValueError(f"cannot read {path}: {err.strerror}") from None
        if mode & 0o077:
            raise ValueError(f"{path} is readable by others (mode {mode & 0o777:o}); "
                             "chmod 600 it")
    if (args.nats_cert is None) != (args.nats_key is None):
        raise ValueError("--nats-cert and --nats-key go together")
    return NatsSettings(servers=args.nats, creds_file=args.nats_creds,
                        nkey_seed_file=args.nats_nkey, ca_file=args.nats_ca,
                        cert_file=args.nats_cert, key_file=args.nats_key, name=name,
                        publish_timeout_s=args.nats_timeout,
                        connect_deadline_s=args.nats_connect_timeout)
