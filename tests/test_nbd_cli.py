"""``zsmalloc serve`` as a process: listening, SIGUSR1 statistics, a clean stop on SIGTERM / SIGINT.

It runs nbdkit with the plugin; the statistics and the summary are the
plugin's (its stats directory), printed by the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time

import click
import pytest

from nbd_client import NbdClient
from nbd_helpers import need_tools
from zsmalloc.cli.serve import ByteSize

pytestmark = pytest.mark.timeout(60)

SERVE = [sys.executable, "-c", "from zsmalloc.cli import main; main()", "serve"]


def next_line(proc: subprocess.Popen, timeout: float = 15.0) -> str:
    """The next line ``serve`` prints (read by a thread, so that the wait is bounded)."""
    lines = proc.lines  # type: ignore[attr-defined]
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        line = None
    if line is None:
        proc.kill()
        raise AssertionError(f"no output from serve: {proc.stderr.read()}")
    return line


@pytest.fixture
def sockdir():
    with tempfile.TemporaryDirectory(prefix="nbdcli") as tmp:
        yield tmp


def start(*args: str) -> subprocess.Popen:
    need_tools("nbdkit")
    proc = subprocess.Popen([*SERVE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.lines = queue.Queue()  # type: ignore[attr-defined]

    def pump() -> None:
        for line in proc.stdout:
            proc.lines.put(line)
        proc.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc


def test_serve_json_events_stats_and_summary(sockdir: str) -> None:
    path = os.path.join(sockdir, "s")
    proc = start("--size", "8M", "--socket", path, "--json")
    try:
        event = json.loads(next_line(proc))
        assert event["event"] == "listening" and event["size"] == 8 << 20
        assert event["device"] == "engine"
        assert ("note" in event) == (os.environ.get("ZSMALLOC_BACKEND") == "model")
        assert event["addresses"] == [f"nbd+unix:///?socket={path}"]  # the socket only: no TCP port
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
        with NbdClient.open(path) as c:
            c.write(4096, b"abc" * 1000)
        proc.send_signal(signal.SIGUSR1)
        stats = json.loads(next_line(proc))
        assert stats["event"] == "stats"
        assert stats["mm_stat"]["orig_data_size"] == 4096
        assert stats["server"]["requests"]["NBD_CMD_WRITE"] == 1
        assert sum(row["obj_used"] for row in stats["classes"]) == 1
        proc.send_signal(signal.SIGTERM)
        summary = json.loads(next_line(proc))
        assert summary["event"] == "summary" and summary["check"] == "ok"
        assert summary["server"]["connections"] == 1
        assert summary["mm_stat"]["orig_data_size"] == 4096
        assert proc.wait(15) == 0
        assert not os.path.exists(path)  # the socket is removed
    finally:
        proc.kill()
        proc.wait(10)


def test_serve_tables_on_tcp_and_sigint() -> None:
    proc = start("--size", "4M", "--port", "0", "--algorithm", "zstd")
    try:
        line = next_line(proc)
        assert "nbd://127.0.0.1:" in line and "zstd" in line  # loopback unless told otherwise
        port = int(line.split("nbd://127.0.0.1:")[1].split()[0].rstrip(";,"))
        with NbdClient.open(("127.0.0.1", port)) as c:
            c.write(0, b"q" * 8192)
        proc.send_signal(signal.SIGUSR1)
        out = ""
        while " Total " not in out:  # the classes table ends the statistics
            out += next_line(proc)
        assert "orig_data_size" in out and "NBD_CMD_WRITE" in out and "pages_per_zspage" in out
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, proc.stderr.read()
        rest = ""
        while "huge_pages_since" not in rest:  # the summary, then the device's figures
            rest += next_line(proc)
        assert "summary" in rest and "device check" in rest and "ok" in rest
    finally:
        proc.kill()
        proc.wait(10)


def test_serve_refuses_bad_arguments(sockdir: str) -> None:
    bad = subprocess.run([*SERVE, "--size", "lots"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "is not a size" in bad.stderr
    tiny = subprocess.run(
        [*SERVE, "--size", "1M", "--max-request", "1K"], capture_output=True, text=True, timeout=30
    )
    assert tiny.returncode == 2 and "max_request" in tiny.stderr
    nan = subprocess.run(
        [*SERVE, "--size", "1M", "--idle-timeout", "nan"], capture_output=True, text=True, timeout=30
    )
    assert nan.returncode == 2 and "idle_timeout must be a number" in nan.stderr
    busy = os.path.join(sockdir, "file")
    open(busy, "w").close()
    taken = subprocess.run(
        [*SERVE, "--size", "1M", "--socket", busy], capture_output=True, text=True, timeout=30
    )
    assert taken.returncode == 1 and "cannot listen" in taken.stderr


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("64K", 64 << 10),
        ("512m", 512 << 20),
        ("1G", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("2TB", 2 << 40),
    ],
)
def test_byte_sizes(text: str, value: int) -> None:
    assert ByteSize().convert(text, None, None) == value


def test_byte_size_rejects_nonsense() -> None:
    with pytest.raises(click.BadParameter):
        ByteSize().convert("1X", None, None)


def test_a_storm_of_sigusr1_while_serving_neither_hangs_nor_kills_the_server(sockdir: str) -> None:
    """The handlers take no lock: one run between two bytecodes of a wait on an Event that
    took the Event's own lock would hang the server for good (it did, rarely, in CI)."""
    path = os.path.join(sockdir, "s")
    proc = start("--size", "16M", "--socket", path, "--json")
    try:
        assert json.loads(next_line(proc))["event"] == "listening"
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.0005)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, f"serve ended by signal {-proc.returncode}" if proc.returncode else ""
        events = [json.loads(line)["event"] for line in iter(proc.lines.get, None)]  # type: ignore[attr-defined]
        assert "stats" in events
        assert events[-1] == "summary"
    finally:
        proc.kill()
        proc.wait(10)


def test_sigusr1_during_the_shutdown_does_not_kill_the_server(sockdir: str) -> None:
    """Issue 10, item 9: SIGUSR1 from the stop to the exit, the check and summary included."""
    path = os.path.join(sockdir, "s")
    proc = start("--size", "64M", "--socket", path, "--json")
    try:
        assert json.loads(next_line(proc))["event"] == "listening"
        with NbdClient.open(path) as c:
            c.write(0, os.urandom(8 << 20))  # something for the final check to walk
        proc.send_signal(signal.SIGTERM)
        for _ in range(10_000):  # every millisecond until it has exited (10 s at most)
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGUSR1)
            time.sleep(0.001)
        assert proc.wait(15) == 0, f"serve ended by signal {-proc.returncode}" if proc.returncode else ""
        events = [json.loads(line)["event"] for line in iter(proc.lines.get, None)]  # type: ignore[attr-defined]
        assert "summary" in events
    finally:
        proc.kill()
        proc.wait(10)
