"""The one validator: `casino-gateway check` and `run` refuse the same things, with exit 78 and
one line naming the field; check starts nothing and touches no port."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
import select
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from gateway.check import check_config, device_holder
from gateway.cli import main
from gateway.config import load_config
from gateway.signing import write_signing_key
from gateway.tokens import make_token


@pytest.fixture(autouse=True)
def logs_back():
    """main() points structlog at this test's captured stderr; put it back afterwards."""
    from gateway.logs import configure_logging

    yield
    configure_logging("warning", "console", stream=sys.__stderr__)


def _secret(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, data)
    os.close(fd)
    return path


class Plant:
    """A directory holding everything a good configuration names, and a pty as its port."""

    def __init__(self, base: Path) -> None:
        self.base = base
        write_signing_key(base / "gw.key")
        _secret(base / "token", b"cgw_uplink-token-from-the-platform\n")
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(base / "ca.pem"))
        cert = ca.issue_cert("127.0.0.1")
        _secret(base / "feed.key", cert.private_key_pem.bytes())
        (base / "feed.pem").write_bytes(b"".join(c.bytes() for c in cert.cert_chain_pems))
        self.master, self.slave = os.openpty()
        self.device = os.ttyname(self.slave)
        self.fields: dict[str, dict[str, object]] = {
            "gateway": {"id": "check-gw", "key_file": "gw.key", "state_dir": "state",
                        "control_socket": str(base / "control.sock")},
            "uplink": {"url": "wss://127.0.0.1:9/v1/stream", "token_file": "token",
                       "ca_file": "ca.pem"},
            "feed": {"host": "0.0.0.0", "port": 0, "certfile": "feed.pem", "keyfile": "feed.key"},
        }
        self.ports = [{"name": "port1", "device": self.device}]
        self.token = make_token("attendant", "floor")

    def write(self) -> Path:
        def value(v: object) -> str:
            return str(v).lower() if isinstance(v, bool) else (
                f'"{v}"' if isinstance(v, str) else str(v))

        text = ""
        for section, table in self.fields.items():
            text += f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items())
        text += f"[[feed.tokens]]\nname = \"floor\"\nrole = \"attendant\"\n" \
                f"sha256 = \"{self.token.sha256}\"\n"
        for port in self.ports:
            text += "[[ports]]\n" + "".join(f"{k} = {value(v)}\n" for k, v in port.items())
        path = self.base / "gateway.toml"
        path.write_text(text)
        return path

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    p = Plant(tmp_path)
    yield p
    p.close()


def cli(*argv: str, timeout: float = 20) -> int:
    """main() in a worker thread with a deadline: a validator that lets a FIFO key through
    would hang `run` instead of failing."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(main, list(argv)).result(timeout=timeout)


def test_check_accepts_a_good_config_and_starts_nothing(plant: Plant, capsys):
    config = plant.write()
    assert cli("check", "--config", str(config)) == 0
    out, err = capsys.readouterr()
    assert "OK (1 port(s))" in out and err == ""
    # Nothing was started or created: no state directory, outbox, journal or control socket,
    # and not one byte reached the machine's end of the pty.
    assert not (plant.base / "state").exists()
    assert not (plant.base / "control.sock").exists()
    assert select.select([plant.master], [], [], 0)[0] == []


def _ca_not_pem(p: Plant) -> None:
    (p.base / "ca.pem").write_text("this is not a certificate\n")


def _key_is_a_directory(p: Plant) -> None:
    (p.base / "gw.key").unlink()
    (p.base / "gw.key").mkdir()


def _key_is_a_fifo(p: Plant) -> None:
    (p.base / "gw.key").unlink()
    os.mkfifo(p.base / "gw.key", 0o600)


def _key_not_a_key(p: Plant) -> None:
    _secret(p.base / "gw.key", b"not hex\n")


def _set(section: str, **values: object) -> Callable[[Plant], None]:
    def change(p: Plant) -> None:
        p.fields[section].update(values)
    return change


def _chmod(name: str, mode: int) -> Callable[[Plant], None]:
    return lambda p: os.chmod(p.base / name, mode)


def _unlink(name: str) -> Callable[[Plant], None]:
    return lambda p: (p.base / name).unlink()


def _state_dir_impossible(p: Plant) -> None:
    (p.base / "afile").write_text("")
    p.fields["gateway"]["state_dir"] = "afile/state"


def _weak_staff_token(p: Plant) -> None:
    p.token = make_token("attendant", "floor")
    object.__setattr__(p.token, "sha256",
                       "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")


def _same_device_twice(p: Plant) -> None:
    p.ports.append({"name": "port2", "device": p.device})


def _device_is_a_file(p: Plant) -> None:
    (p.base / "ttyFAKE").write_text("")
    p.ports[0]["device"] = str(p.base / "ttyFAKE")


def _control_socket_is_a_file(p: Plant) -> None:
    (p.base / "control.sock").write_text("")


BAD = [
    # (what, change, field, words) -- every one exited 1 with a traceback, hung, or started.
    ("ca_file missing", _unlink("ca.pem"), "uplink.ca_file", "does not exist"),
    ("ca_file not PEM", _ca_not_pem, "uplink.ca_file", "no PEM certificate"),
    ("client_cert missing", _set("uplink", client_cert="client.pem"), "uplink.client_cert",
     "does not exist"),
    ("client_key without cert", _set("uplink", client_key="feed.key"), "uplink.client_key",
     "needs client_cert"),
    ("feed cert missing", _unlink("feed.pem"), "feed.certfile", "does not exist"),
    ("feed key too open", _chmod("feed.key", 0o644), "feed.keyfile", "chmod 600"),
    ("key file a directory", _key_is_a_directory, "gateway.key_file", "is a directory"),
    ("key file a FIFO", _key_is_a_fifo, "gateway.key_file", "not a regular file"),
    ("key file missing", _unlink("gw.key"), "gateway.key_file", "keys init"),
    ("key file too open", _chmod("gw.key", 0o640), "gateway.key_file", "chmod 600"),
    ("key file not a key", _key_not_a_key, "gateway.key_file", "not a hex Ed25519"),
    ("token file missing", _unlink("token"), "uplink.token_file", "does not exist"),
    ("token file 0644", _chmod("token", 0o644), "uplink.token_file", "chmod 600"),
    ("window 0", _set("uplink", window=0), "uplink.window", "between 1"),
    ("heartbeat -1", _set("uplink", heartbeat_s=-1), "uplink.heartbeat_s", "not 0"),
    ("backoff_max -5", _set("uplink", backoff_max_s=-5), "uplink.backoff_max_s", "not 0"),
    ("batch_max 0", _set("uplink", batch_max=0), "uplink.batch_max", "between 1"),
    ("ws:// to the LAN", _set("uplink", url="ws://10.1.2.3/v1/stream"), "uplink.url",
     "in clear"),
    ("state dir impossible", _state_dir_impossible, "gateway.state_dir", "cannot be created"),
    ("weak staff token", _weak_staff_token, "feed.tokens[0].sha256", "weak token"),
    ("one device, two ports", _same_device_twice, "ports[1].device", "same device"),
    ("device a plain file", _device_is_a_file, "ports[0].device", "not a serial device"),
    ("control socket a file", _control_socket_is_a_file, "gateway.control_socket",
     "not a socket"),
]


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize(("what", "change", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_each_problem_is_exit_78_with_one_line_naming_the_field(
        plant: Plant, capsys, command: str, what: str, change: Callable[[Plant], None],
        field: str, words: str):
    change(plant)
    config = plant.write()
    assert cli(command, "--config", str(config)) == 78, what
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "configuration error" in line]
    assert len(lines) == 1, err
    assert f"casino-gateway: configuration error: {field}: " in lines[0] and words in lines[0]
    assert "Traceback" not in err
    assert not (plant.base / "state").exists()


def test_several_problems_one_line_each(plant: Plant, capsys):
    _unlink("token")(plant)
    _chmod("gw.key", 0o644)(plant)
    _ca_not_pem(plant)
    assert cli("check", "--config", str(plant.write())) == 78
    err = capsys.readouterr().err
    assert [line.split(": ")[2] for line in err.splitlines() if "configuration error" in line] \
        == ["gateway.key_file", "uplink.token_file", "uplink.ca_file"]


def test_missing_device_is_a_warning_unless_strict(plant: Plant, capsys):
    plant.ports[0]["device"] = "/dev/ttyUSB-not-plugged-in"
    config = plant.write()
    assert cli("check", "--config", str(config)) == 0
    out, err = capsys.readouterr()
    assert "warning: ports[0].device: /dev/ttyUSB-not-plugged-in does not exist" in err
    assert "1 warning" in out
    assert cli("check", "--strict", "--config", str(config)) == 78
    assert "configuration error: ports[0].device:" in capsys.readouterr().err


def test_a_device_locked_by_another_program_is_busy(plant: Plant, capsys):
    # Like minicom or picocom: the device opened and flock()ed by another process.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\n"
         f"fd = os.open({plant.device!r}, os.O_RDWR | os.O_NOCTTY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert f"locked by pid {holder.pid}" in device_holder(Path(plant.device))
        config = plant.write()
        assert cli("check", "--config", str(config)) == 0
        assert f"warning: ports[0].device: {plant.device} is in use: locked by pid " \
            f"{holder.pid}" in capsys.readouterr().err
        assert cli("check", "--strict", "--config", str(config)) == 78
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert device_holder(Path(plant.device)) is None


def test_a_file_open_in_another_process_is_found(tmp_path: Path):
    # What "in use" means for a real serial port (a pty's other end is its simulator).
    path = tmp_path / "ttyREAL"
    path.write_text("")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys\nf = open({str(path)!r})\nprint('open', flush=True)\n"
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        assert (device_holder(path) or "").startswith(f"open in pid {holder.pid} (python")
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert device_holder(path) is None


def test_a_control_socket_directory_systemd_will_make_is_a_warning(plant: Plant, capsys):
    # The guide runs check before the first start, when /run/casino-gateway does not exist
    # yet; run would go on without the control socket.
    (plant.base / "afile").write_text("")  # its directory cannot be made, even by root
    plant.fields["gateway"]["control_socket"] = str(plant.base / "afile" / "control.sock")
    problems = check_config(load_config(plant.write()))
    assert [(p.field, p.warning) for p in problems] == [("gateway.control_socket", True)]
    assert "diag will not work" in problems[0].message


def test_the_systemd_state_directory_before_the_first_start(plant: Plant, monkeypatch):
    # The guide checks before the first start; StateDirectory= is made by systemd then. run by
    # hand needs it now.
    from gateway import check

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setattr(check, "SYSTEMD_STATE_DIR", plant.base / "afile" / "state")
    (plant.base / "afile").write_text("")
    plant.fields["gateway"]["state_dir"] = str(check.SYSTEMD_STATE_DIR)
    config = load_config(plant.write())
    problems = check_config(config)
    assert [(p.field, p.warning) for p in problems] == [("gateway.state_dir", True)]
    assert "systemd makes it when it starts the unit" in problems[0].message
    problems = check_config(config, starting=True)
    assert [(p.field, p.warning) for p in problems] == [("gateway.state_dir", False)]


def test_a_second_gateway_on_the_same_socket_is_refused(plant: Plant, capsys):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as served:
        served.bind(str(plant.base / "control.sock"))
        served.listen(1)
        assert cli("check", "--config", str(plant.write())) == 78
    assert "gateway.control_socket: another gateway is serving" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play the service user")
def test_a_root_owned_key_is_named_for_the_service_user():
    # Rotating as root left a root-owned key: the next start exited 1 (a restart loop).
    base = Path(tempfile.mkdtemp(prefix="check-owner-"))
    os.chmod(base, 0o755)
    try:
        plant = Plant(base)
        try:
            config = plant.write()
            os.chmod(plant.device, 0o666)
            # A child that becomes nobody, after importing what it needs (Python's own library
            # lives under /root here).
            done = subprocess.run(
                [sys.executable, "-c", "import os, pwd, sys\n"
                 "from pathlib import Path\n"
                 "from gateway.check import check_config\n"
                 "from gateway.config import load_config\n"
                 "config = load_config(Path(sys.argv[1]))\n"
                 "os.setgid(65534)\nos.setuid(65534)\n"
                 "print('\\n'.join(p.line() for p in check_config(config)))", str(config)],
                capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
        finally:
            plant.close()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)
    report = done.stdout
    assert done.returncode == 0, done.stderr
    assert "error: gateway.key_file: " in report and "is owned by root, but the gateway runs " \
        "as nobody: chown nobody" in report
    assert "error: uplink.token_file: " in report


def test_problems_under_journald_carry_their_priority(plant: Plant, monkeypatch):
    # Under systemd (JOURNAL_STREAM names stderr) a configuration error is priority 3.
    _unlink("token")(plant)
    read, write = os.pipe()
    stream = os.fdopen(write, "w")
    st = os.fstat(write)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    from gateway.cli import _print_problems

    with contextlib.closing(stream):
        _print_problems(check_config(load_config(plant.write())), stream)
    with os.fdopen(read) as pipe:
        assert pipe.read().startswith("<3>casino-gateway: configuration error: "
                                      "uplink.token_file:")
    out = io.StringIO()  # not the journal stream: no prefix
    _print_problems(check_config(load_config(plant.write())), out)
    assert out.getvalue().startswith("casino-gateway: configuration error: ")
