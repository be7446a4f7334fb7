"""`kubegate serve` as a user runs it: a process, signals, ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

EXAMPLES = str(Path(__file__).resolve().parents[2] / "examples")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _metric(admin: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"metric {name} missing")


def _kubegate(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kubegate.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_taken_port_is_a_clear_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _kubegate(
            "serve",
            EXAMPLES,
            "--workers",
            "1",
            "--listen",
            f"127.0.0.1:{port}",
            "--tls-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        )
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_serves_admin_endpoints_and_stops_on_sigterm() -> None:
    port, admin = _free_port(), _free_port()
    proc = _kubegate(
        "serve",
        EXAMPLES,
        "--workers",
        "1",
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-listen",
        "127.0.0.1:0",
        "--admin-listen",
        f"127.0.0.1:{admin}",
    )
    try:
        deadline = time.monotonic() + 20
        body = b""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as response:
                    body = response.read()
                    break
            except OSError:
                time.sleep(0.1)
        assert body == b"ok\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as response:
            assert b"kubegate_config_version" in response.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/debug/ir", timeout=2) as response:
            assert b"foo.bar.com" in response.read()
        reloads = _metric(admin, "kubegate_reloads_total")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _metric(admin, "kubegate_reloads_total") <= reloads and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(admin, "kubegate_reloads_total") > reloads
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_workers_share_the_port_and_both_stop_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    proc = _kubegate(
        "serve",
        EXAMPLES,
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-listen",
        "off",
        "--admin-listen",
        "127.0.0.1:0",
        "--access-log",
        "off",
    )
    try:
        deadline = time.monotonic() + 20
        answered = 0
        while time.monotonic() < deadline and answered < 20:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/nothing", headers={"Host": "x"})
                urllib.request.urlopen(request, timeout=1)
            except urllib.error.HTTPError as error:
                assert error.code == 404
                answered += 1
            except OSError:
                time.sleep(0.1)
        assert answered == 20
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
