"""One poller per serial device (issue 13 finding 9): the lock file holds the PID, a second opener
gets a one-line error naming the holder, and closing (or dying) releases it. Root bypasses
TIOCEXCL, so these tests check the lock file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from drivers.link import open_link
from drivers.link.lock import DeviceBusyError, DeviceLock, lock_holder, lock_path


@pytest.fixture
def pty_path():
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


async def test_second_opener_is_refused_with_the_holders_pid(pty_path: str, tmp_path: Path) -> None:
    with trio.fail_after(10):
        link = await open_link(pty_path, lock_dir=tmp_path)
        path = lock_path(pty_path, tmp_path)
        assert path.read_text().strip() == str(os.getpid())
        assert lock_holder(pty_path, tmp_path) == os.getpid()
        with pytest.raises(DeviceBusyError) as err:
            await open_link(pty_path, lock_dir=tmp_path)
        message = str(err.value)
        assert "\n" not in message
        assert f"in use by process {os.getpid()}" in message and pty_path in message
        await link.aclose()
        assert lock_holder(pty_path, tmp_path) is None
        again = await open_link(pty_path, lock_dir=tmp_path)
        await again.aclose()


async def test_every_name_of_a_device_shares_one_lock(pty_path: str, tmp_path: Path) -> None:
    alias = tmp_path / "serial-by-id"
    alias.symlink_to(pty_path)
    with trio.fail_after(10):
        link = await open_link(str(alias), lock_dir=tmp_path)
        try:
            with pytest.raises(DeviceBusyError):
                await open_link(pty_path, lock_dir=tmp_path)
        finally:
            await link.aclose()


def test_a_killed_holder_leaves_no_lock(pty_path: str, tmp_path: Path) -> None:
    # The kernel drops an flock with its process: a stale file (PID inside) blocks nobody.
    code = ("import sys, time; from pathlib import Path; from drivers.link.lock import DeviceLock;"
            f"DeviceLock({pty_path!r}, Path({str(tmp_path)!r})).acquire(); print('held', flush=True);"
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).parents[2])
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        assert lock_holder(pty_path, tmp_path) == child.pid
        with pytest.raises(DeviceBusyError, match=f"process {child.pid}"):
            DeviceLock(pty_path, tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    assert lock_path(pty_path, tmp_path).exists()
    assert lock_holder(pty_path, tmp_path) is None
    lock = DeviceLock(pty_path, tmp_path)
    lock.acquire()
    lock.release()
