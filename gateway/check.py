"""The one validator for everything `run` loads: files, modes, certificates, devices, directories.

`run` calls it before starting anything and `casino-gateway check` runs nothing else, so what
check accepts is what run accepts. Each problem is one line naming the field and what to do.
It only reads: it creates no file or directory, opens no serial port and binds no socket, so it
is safe next to a running gateway and as the unit's ExecStartPre.

A serial device that is missing or busy is a warning (a USB adapter can appear late at boot, and
the gateway retries each port on its own); `strict` makes it an error.
"""

from __future__ import annotations

import os
import pwd
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from gateway.config import Config, is_loopback
from gateway.control import control_socket_path
from gateway.serialports import stable_names

__all__ = ["Problem", "check_config"]

# Secret files are small; a larger one is a wrong path (and must not be read whole).
_MAX_SECRET_BYTES = 64 * 1024
_LOCK_DIRS = (Path("/run/lock"), Path("/var/lock"))
_PTY_MAJORS = range(136, 144)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration: `field` names it, `message` says what to do."""

    field: str
    message: str
    warning: bool = False

    def line(self) -> str:
        return f"{'warning' if self.warning else 'error'}: {self.field}: {self.message}"


# What the unit's StateDirectory= makes when systemd starts it (the default state_dir).
SYSTEMD_STATE_DIR = Path("/var/lib/casino-gateway")


def check_config(config: Config, *, strict: bool = False, starting: bool = False
                 ) -> list[Problem]:
    """Every problem `run` would hit with this configuration (empty: it would start).
    `starting`: run is about to use it now, so a state directory systemd would have made is
    needed already."""
    found: list[Problem] = []
    g, u = config.gateway, config.uplink
    key = _secret_file(found, "gateway.key_file", g.key_file,
                       f"create it with: casino-gateway keys init --key-file {g.key_file}")
    if key is not None:
        try:
            nacl.signing.SigningKey(bytes.fromhex(key.decode("ascii").strip()))
        except (ValueError, UnicodeDecodeError, nacl.exceptions.CryptoError):
            found.append(Problem("gateway.key_file", f"{g.key_file} is not a hex Ed25519 "
                                 "private key (as written by casino-gateway keys init)"))
    token = _secret_file(found, "uplink.token_file", u.token_file,
                         "store the platform's bearer token there, mode 0600")
    if token is not None:
        _check_token(found, u.token_file, token)
    _check_tls(found, config)
    state: list[Problem] = []
    _writable_dir(state, "gateway.state_dir", g.state_dir)
    if state and not starting and g.state_dir == SYSTEMD_STATE_DIR \
            and not os.environ.get("STATE_DIRECTORY") and not g.state_dir.exists():
        state = [Problem(p.field, f"{g.state_dir} does not exist yet: systemd makes it when it "
                         f"starts the unit (StateDirectory=); to run by hand first: install -d "
                         f"-o casino-gateway -g casino-gateway -m 0750 {g.state_dir}",
                         warning=True) for p in state[:1]]
    found += state
    if config.outbox.path is not None:
        _writable_dir(found, "outbox.path", config.outbox.path.parent)
    _existing_rw(found, "outbox.path", config.outbox_path)
    _check_outbox_schema(found, config.outbox_path)
    _check_control_socket(found, control_socket_path(g))
    _check_ports(found, config, strict)
    if config.feed is not None and config.feed.tokens and config.feed.certfile is None \
            and not is_loopback(config.feed.host):
        found.append(Problem("feed.certfile", f"staff tokens would cross the network in clear "
                             f"(feed.host = {config.feed.host!r} without TLS): set certfile "
                             "and keyfile, or keep host = \"127.0.0.1\"", warning=True))
    return found


# -- files ------------------------------------------------------------------------------------------

def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _stat(found: list[Problem], where: str, path: Path, missing: str) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        found.append(Problem(where, f"{path} does not exist; {missing}"))
    except PermissionError:
        found.append(Problem(where, f"{path} cannot be reached by user {_user()}: a directory "
                             "on the way is not searchable (check its owner and mode)"))
    except OSError as err:
        found.append(Problem(where, f"{path}: {err.strerror}"))
    return None


def _regular_file(found: list[Problem], where: str, path: Path, missing: str
                  ) -> os.stat_result | None:
    st = _stat(found, where, path, missing)
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        found.append(Problem(where, f"{path} is a directory; give the path of the file itself"))
        return None
    if not stat.S_ISREG(st.st_mode):
        found.append(Problem(where, f"{path} is not a regular file (a FIFO, socket or device); "
                             "give the path of the file itself"))
        return None
    return st


def _read(found: list[Problem], where: str, path: Path) -> bytes | None:
    """The file's bytes, opened without blocking (a FIFO swapped in must not hang us)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except PermissionError:
        found.append(Problem(where, f"{path} cannot be read by user {_user()} (owner "
                             f"{_owner(path.stat().st_uid)}): chown {_user()} {path}"))
        return None
    except OSError as err:
        found.append(Problem(where, f"{path} cannot be read: {err.strerror}"))
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            found.append(Problem(where, f"{path} is not a regular file"))
            return None
        data = os.read(fd, _MAX_SECRET_BYTES + 1)
    except OSError as err:
        found.append(Problem(where, f"{path} cannot be read: {err.strerror}"))
        return None
    finally:
        os.close(fd)
    if len(data) > _MAX_SECRET_BYTES:
        found.append(Problem(where, f"{path} is larger than {_MAX_SECRET_BYTES // 1024} KiB: "
                             "not the file meant here"))
        return None
    return data


def _secret_file(found: list[Problem], where: str, path: Path, missing: str) -> bytes | None:
    """A private key or token: a regular file only its owner can read, owned by whoever runs
    the gateway (or by root, who can read anything)."""
    st = _regular_file(found, where, path, missing)
    if st is None:
        return None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        found.append(Problem(where, f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it must "
                             f"be readable by its owner only (fix with: chmod 600 {path})"))
        return None
    if os.geteuid() != 0 and st.st_uid != os.geteuid():
        found.append(Problem(where, f"{path} is owned by {_owner(st.st_uid)}, but the gateway "
                             f"runs as {_user()}: chown {_user()} {path}"))
        return None
    return _read(found, where, path)


def _check_token(found: list[Problem], path: Path, data: bytes) -> None:
    try:
        lines = data.decode("ascii").strip().splitlines()
    except UnicodeDecodeError:
        lines = []
    token = lines[0] if len(lines) == 1 else ""
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        found.append(Problem("uplink.token_file", f"{path} must hold the bearer token alone, "
                             "on one line of printable ASCII without spaces"))


def _public_file(found: list[Problem], where: str, path: Path, missing: str) -> bool:
    if _regular_file(found, where, path, missing) is None:
        return False
    return _read(found, where, path) is not None


def _check_tls(found: list[Problem], config: Config) -> None:
    u = config.uplink
    if u.ca_file is not None and _public_file(found, "uplink.ca_file", u.ca_file,
                                              "give the platform's CA bundle (PEM)"):
        try:
            ssl.create_default_context(cafile=str(u.ca_file))
        except (ssl.SSLError, ValueError):
            found.append(Problem("uplink.ca_file", f"{u.ca_file} holds no PEM certificate "
                                 "(expected -----BEGIN CERTIFICATE----- blocks)"))
    if u.client_key is not None and u.client_cert is None:
        found.append(Problem("uplink.client_key", "client_key needs client_cert: set both"))
    if u.client_cert is not None:
        _cert_and_key(found, "uplink.client_cert", u.client_cert, "uplink.client_key",
                      u.client_key, ssl.Purpose.SERVER_AUTH)
    feed = config.feed
    if feed is not None and feed.certfile is not None and feed.keyfile is not None:
        _cert_and_key(found, "feed.certfile", feed.certfile, "feed.keyfile", feed.keyfile,
                      ssl.Purpose.CLIENT_AUTH)


def _cert_and_key(found: list[Problem], cert_where: str, cert: Path, key_where: str,
                  key: Path | None, purpose: ssl.Purpose) -> None:
    before = len(found)
    _public_file(found, cert_where, cert, "give the certificate chain (PEM)")
    if key is not None:
        _secret_file(found, key_where, key, "give the certificate's private key (PEM), mode 0600")
    if len(found) > before:
        return
    try:
        ssl.create_default_context(purpose).load_cert_chain(str(cert), str(key) if key else None)
    except (ssl.SSLError, ValueError) as err:
        found.append(Problem(cert_where, f"{cert} and its key do not load as a PEM certificate "
                             f"chain and matching private key ({err.args[-1]})"))


# -- directories ------------------------------------------------------------------------------------

def _writable_dir(found: list[Problem], where: str, path: Path) -> None:
    """`path` is a directory this user can write, or can be created (the daemon creates it)."""
    fix = f"create it: install -d -o {_user()} -m 0750 {path}"
    probe = path
    while not probe.exists():
        if probe.is_symlink() or probe.parent == probe:
            found.append(Problem(where, f"{path} does not exist and cannot be created; {fix}"))
            return
        probe = probe.parent
    if not probe.is_dir():
        found.append(Problem(where, f"{path} is not a directory" if probe == path else
                             f"{path} cannot be created: {probe} is not a directory; {fix}"))
    elif not os.access(probe, os.W_OK | os.X_OK):
        found.append(Problem(where, f"{path} does not exist and user {_user()} cannot create it "
                             f"in {probe}; {fix}" if probe != path else
                             f"{path} is not writable by user {_user()}: "
                             f"chown {_user()} {path}"))


def _existing_rw(found: list[Problem], where: str, path: Path) -> None:
    try:
        st = path.stat()
    except OSError:
        return  # created at start; its directory was checked
    if not stat.S_ISREG(st.st_mode):
        found.append(Problem(where, f"{path} is not a regular file"))
    elif not os.access(path, os.R_OK | os.W_OK):
        found.append(Problem(where, f"{path} is not readable and writable by user {_user()} "
                             f"(owner {_owner(st.st_uid)}): chown {_user()} {path}"))


def _check_outbox_schema(found: list[Problem], path: Path) -> None:
    """An outbox a newer release upgraded is refused at open: say so here (from the file
    header; the database is not opened)."""
    from gateway.outbox.migrations import SCHEMA_VERSION, file_version, too_new_message

    try:
        version = file_version(path)
    except OSError:
        return  # missing (created at start) or unreadable (reported above)
    if version is not None and version > SCHEMA_VERSION:
        found.append(Problem("outbox.path", too_new_message(path, version)))


def _check_control_socket(found: list[Problem], path: Path) -> None:
    """What ControlServer.open refuses: a path that is not a socket, or one a gateway serves
    (the guard against a second gateway on the same configuration)."""
    where = "gateway.control_socket"
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        # Not fatal to run (it goes on without diag), and systemd creates the unit's
        # RuntimeDirectory only when it starts it: a warning.
        missing: list[Problem] = []
        _writable_dir(missing, where, path.parent)
        found += [Problem(p.field, p.message + " (diag will not work until it can; the unit's "
                          "RuntimeDirectory= is made by systemd at start)", warning=True)
                  for p in missing]
        return
    except OSError as err:
        found.append(Problem(where, f"{path}: {err.strerror}"))
        return
    if not stat.S_ISSOCK(st.st_mode):
        found.append(Problem(where, f"{path} exists and is not a socket; the gateway will not "
                             "replace it: remove it or choose another path"))
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return  # left by a gateway that stopped abruptly: run replaces it
    found.append(Problem(where, f"another gateway is serving {path}; is it already running "
                         "with this configuration? (systemctl status casino-gateway)"))


# -- serial devices ---------------------------------------------------------------------------------

def _check_ports(found: list[Problem], config: Config, strict: bool) -> None:
    seen: dict[tuple[int, int], str] = {}
    for i, port in enumerate(config.ports):
        where = f"ports[{i}].device"
        try:
            st = port.device.stat()
        except FileNotFoundError:
            found.append(Problem(where, f"{port.device} does not exist (yet): check the name and "
                                 "that the adapter is plugged in; the gateway retries it",
                                 warning=not strict))
            continue
        except OSError as err:
            found.append(Problem(where, f"{port.device}: {err.strerror}"))
            continue
        if not stat.S_ISCHR(st.st_mode):
            found.append(Problem(where, f"{port.device} is not a serial device"))
            continue
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            found.append(Problem(where, f"{port.device} is the same device as {seen[ident]}: "
                                 "one [[ports]] table per serial line"))
            continue
        seen[ident] = where
        _suggest_stable_name(found, where, port.device)
        if not os.access(port.device, os.R_OK | os.W_OK):
            found.append(Problem(where, f"{port.device} is not readable and writable by user "
                                 f"{_user()}: add it to the device's group (usually dialout)"))
            continue
        holder = device_holder(port.device, st)
        if holder is not None:
            found.append(Problem(where, f"{port.device} is in use: {holder}; two programs on one "
                                 "SAS line corrupt each other's polls", warning=not strict))


def _suggest_stable_name(found: list[Problem], where: str, device: Path) -> None:
    """A kernel name (/dev/ttyUSB0) that udev also gives a stable name: suggest the stable one,
    since USB adapters can swap kernel names across a re-plug or a reboot."""
    by_id, by_path = stable_names(device)
    if str(device).startswith("/dev/serial/") or str(device) in (by_id, by_path):
        return
    if by_id or by_path:
        found.append(Problem(where, f"{device} can change name when USB adapters are re-plugged "
                             f"or enumerate in another order; use its stable name "
                             f"{by_id or by_path}", warning=True))


def device_holder(path: Path, st: os.stat_result | None = None) -> str | None:
    """Who else holds `path`, in words, or None: a UUCP lock file with a live pid, an flock or
    POSIX lock (/proc/locks), or -- for a real serial port -- another process with it open
    (only the processes this user may see). A pseudo-terminal's other end is its simulator, so
    open pty slaves are not counted. Never opens the device."""
    st = st or path.stat()
    for lock_dir in _LOCK_DIRS:
        pid = _uucp_lock_pid(lock_dir / f"LCK..{path.resolve().name}")
        if pid is not None:
            return f"locked by pid {pid} ({lock_dir}/LCK..{path.resolve().name})"
    pid = _proc_lock_pid(st)
    if pid is not None:
        return f"locked by pid {pid} ({_comm(pid)})"
    if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_MAJORS:
        return None
    pid = _opened_by(st)
    return None if pid is None else f"open in pid {pid} ({_comm(pid)})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _uucp_lock_pid(lock: Path) -> int | None:
    try:
        text = lock.read_bytes()[:64]
    except OSError:
        return None
    try:
        pid = int(text.strip() or b"0") if len(text) != 4 else int.from_bytes(text, "little")
    except ValueError:
        return None
    return pid if pid > 0 and pid != os.getpid() and _alive(pid) else None


def _proc_lock_pid(st: os.stat_result) -> int | None:
    """/proc/locks lines: `1: FLOCK ADVISORY WRITE 1234 00:05:87 0 EOF` (maj:min:inode)."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        if "->" in parts:
            continue  # a waiter, not a holder
        if len(parts) >= 6 and parts[5] == want and parts[4].isdigit():
            pid = int(parts[4])
            if pid != os.getpid():
                return pid
    return None


def _opened_by(st: os.stat_result) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # another user's process, or gone
        for fd in fds:
            try:
                other = fd.stat()
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return int(entry.name)
    return None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
