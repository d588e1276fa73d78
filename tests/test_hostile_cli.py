"""The command line under hostile use (issue 10, items 11, 12 and 14).

Every bad value is a one-line click usage error with exit code 2, never a
traceback; values that make no sense are refused, not run; and the program's
own text reaches a pipe whole: never read as rich markup, never wrapped at 80
columns, no table cell cut short.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import click
import pytest
from click.testing import CliRunner

from zsmalloc.cli import main, serve
from zsmalloc.cli.app import console
from zsmalloc.protocheck import SCENARIOS, explore_exhaustive
from zsmalloc.stress import StressReport

CLI = [sys.executable, "-c", "from zsmalloc.cli import main; main()"]
GIB = 1 << 30


def refused(*args: str) -> str:
    """Run the command; assert it was refused with one ``Error:`` line and exit code 2; return that line."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def piped(*args: str, timeout: float = 120) -> str:
    """The command's stdout with every standard stream a pipe (no terminal anywhere), COLUMNS unset."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE")
    }
    proc = subprocess.run(
        [*CLI, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


# ----------------------------------------------------------------------
# item 11: tracebacks instead of clear errors


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("stats", "--pages", "16", "--discard", "nan"), "--discard"),
        (("pool-demo", "--objects", "100", "--free-share", "nan"), "--free-share"),
        (("pool-demo", "--objects", "-1"), "--objects"),
        (("pool-demo", "--objects", "0"), "--objects"),
        (("stress", "--seconds", "inf"), "--seconds"),
        (("stress", "--seconds", "nan"), "--seconds"),
        (("stress", "--seconds", "1e300"), "--seconds"),
        (("demo", "--pages", "16", "--rewrite", "nan"), "--rewrite"),
        (("demo", "--pages", "16", "--discard", "inf"), "--discard"),
    ],
)
def test_a_non_finite_or_negative_number_is_a_usage_error(args, option):
    assert option in refused(*args)


def test_replay_of_a_file_that_is_not_utf8_is_a_usage_error(tmp_path):
    trace = tmp_path / "trace.bin"
    trace.write_bytes(b"m 1 100\n\xff\xfe garbage\nf 1\n")
    line = refused("replay", str(trace))
    assert "TRACE" in line and "line 2 is not UTF-8" in line


@pytest.fixture
def small_machine(monkeypatch):
    """``serve`` sees a machine of 8 GiB, 4 GiB of them available."""
    memory = SimpleNamespace(total=8 * GIB, available=4 * GIB)
    monkeypatch.setattr(serve.psutil, "virtual_memory", lambda: memory)


def test_serve_refuses_a_size_whose_slot_table_does_not_fit(small_machine):
    line = refused("serve", "--size", "100T", "--mem-limit", "1G")
    assert "slot table" in line and "4.0 GiB available" in line


def test_serve_refuses_a_size_the_machine_cannot_back_without_a_mem_limit(small_machine):
    assert "--mem-limit" in refused("serve", "--size", "20G")
    assert "more than this machine's memory" in refused("serve", "--size", "1G", "--mem-limit", "9G")


def test_serve_takes_a_size_the_machine_backs(small_machine):
    serve.check_backable(16 * GIB, 0)  # 8 GiB of pool at 2:1
    serve.check_backable(1 << 40, 1 * GIB)  # a big disk, its pool capped
    with pytest.raises(click.UsageError):
        serve.check_backable(16 * GIB + 8192, 0)


def test_serve_out_of_memory_is_a_clear_error() -> None:
    """The device is made in nbdkit: an arena the process may not reserve is nbdkit's one-line error."""
    if shutil.which("nbdkit") is None:
        pytest.skip("nbdkit is not installed")

    def small_address_space() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1500 << 20, 1500 << 20))

    with tempfile.TemporaryDirectory(prefix="nbdoom") as tmp:
        cmd = [sys.executable, "-c", "from zsmalloc.cli import main; main()", "serve", "--size", "1M"]
        proc = subprocess.run(
            [*cmd, "--socket", os.path.join(tmp, "s")],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=small_address_space,
        )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no arena" in proc.stderr and "Cannot allocate memory" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "Error: nbdkit did not start: see its output"


# ----------------------------------------------------------------------
# item 12: nonsense accepted silently


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("stress", "--seconds", "-1", "--threads", "-3"), "--seconds"),
        (("stress", "--seconds", "0"), "--seconds"),
        (("stress", "--seconds", "1", "--threads", "-3"), "--threads"),
        (("stress", "--seconds", "1", "--threads", "0"), "--threads"),
        (("pool-demo", "--objects", "100", "--free-share", "2"), "--free-share"),
        (("pool-demo", "--objects", "100", "--free-share", "-0.5"), "--free-share"),
        (("replay", "--mix", "kernel-build", "--compact-every", "-1"), "--compact-every"),
        (("replay", "--mix", "kernel-build", "--live", "-5"), "--live"),
        (("protocheck", "--random", "-3"), "--random"),
    ],
)
def test_a_value_out_of_its_range_is_a_usage_error(args, option):
    assert option in refused(*args)


def test_replay_refuses_a_trace_that_allocates_a_live_id_again(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text("# two allocations, one id\nm 1 100\nm 2 50\nm 1 200\n")
    line = refused("replay", str(trace))
    assert "line 4: '1' is allocated again, live since line 2" in line


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.10", "example.com"])
def test_serve_on_a_non_loopback_host_needs_allow_remote(host, small_machine):
    line = refused("serve", "--size", "1M", "--host", host)
    assert "--host" in line and "--allow-remote" in line
    # with the flag the host is taken: what refuses the command now is the size
    assert "slot table" in refused("serve", "--size", "100T", "--host", host, "--allow-remote")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST"])
def test_loopback_hosts_need_no_flag(host):
    assert serve.is_loopback(host)


# ----------------------------------------------------------------------
# item 14: the program's text reaches a pipe whole


def test_protocheck_piped_keeps_every_trace_line_whole():
    """Each line of the report's trace is a line of the piped output, brackets and all."""
    out = piped("protocheck", "seed-race", "--protocol", "2016-v3", "--backend", "model")
    lines = out.splitlines()
    report = explore_exhaustive(SCENARIOS["seed-race"], "2016-v3", backend="model")
    trace = [line for line in report.render().splitlines() if line.startswith("    ")]
    assert any("[pool 3 pages, 3 frames]" in line for line in trace)
    assert any(line.startswith("    FAILED after step") for line in trace)
    for line in trace:
        assert line.rstrip() in (got.rstrip() for got in lines), (line, out)
    header = report.render().splitlines()[0]
    assert header in lines  # longer than 80 columns, and not wrapped


def test_stress_piped_prints_its_summary_lines_unwrapped():
    out = piped("stress", "--seconds", "0.3", "--threads", "1", "--protocol", "mainline")
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert lines[0].startswith("stress: protocol mainline") and lines[0].endswith("OK")
    assert lines[1].startswith("  ops: ") and "malloc" in lines[1] and "verify" in lines[1]
    assert len(lines[1]) > 80
    assert lines[2].startswith("  vm:  ") and lines[3].startswith("  pool: ")


def test_stress_prints_a_failure_text_as_it_is(monkeypatch):
    error = "mutator-0: Traceback [pool 3 pages, 3 frames] [bold]x[/bold] :smile: IndexError: [3]"

    def failed(**kwargs):
        return StressReport("mainline", kwargs["seconds"], kwargs["threads"], kwargs["seed"], errors=[error])

    monkeypatch.setattr("zsmalloc.cli.checks.run_stress", failed)
    result = CliRunner().invoke(main, ["stress", "--seconds", "1", "--protocol", "mainline"])
    assert result.exit_code == 1
    assert "    " + error in result.output.splitlines()


def test_replay_piped_shows_its_table_whole_and_a_bracketed_file_name(tmp_path):
    trace = tmp_path / "[bold]trace.txt"
    trace.write_text("m 1 100\nm 2 3000\nf 1\nc\n")
    out = piped("replay", str(trace), "--chain-size", "4", "--chain-size", "16")
    assert f"{trace}: 4 operations" in out
    assert "compacted" in out and "pages / bytes live" in out
    assert "…" not in out  # no cell cut short


def test_stats_prints_a_bracketed_image_name_as_it_is(tmp_path):
    image = tmp_path / "[red]disk.img"
    image.write_bytes(b"hello\n" * 2000)
    result = CliRunner().invoke(main, ["stats", "--image", str(image)])
    assert result.exit_code == 0, result.output
    heading = f"/sys/kernel/debug/zsmalloc/zram0/classes  ({image}, chain 8, min-waste, ratio groups)"
    assert heading in result.output
    assert "[lz4] lz4hc" in result.output


def test_the_console_prints_text_as_it_is(capsys):
    text = "[pool 3 pages, 3 frames] [bold]x[/bold] [red]y :smile: " + "z" * 200
    console.print(text)
    assert capsys.readouterr().out == text + "\n"
