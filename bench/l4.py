"""L4 relay benchmark: kubegate's userspace TCP proxy (stdlib asyncio, uvloop), an os.splice relay, haproxy.

Two workloads, each through every relay and directly (no relay) for reference:
- throughput: one connection uploads ``--megabytes`` to a sink that answers with the byte count;
- connection rate: ``--connections`` short connections (64 bytes up, 8 bytes back), ``--concurrency`` at once.

Layout on a 2-core machine: the relay under test runs alone in its own process on CPU 1; the client (this
process) and the backend (a child process, blocking sockets, a thread per connection) on CPU 0. Relays:
- asyncio / uvloop: ``kubegate.planes.proxy.l4.L4Proxy`` on that event loop (the product);
- splice: blocking sockets, two threads per connection, each moving bytes socket -> pipe -> socket with
  os.splice, so payload never enters Python (Linux only);
- haproxy: Debian's haproxy, one thread, ``mode tcp``.

Measured 2026-12-02 on the shared 2-core dev machine (3 rounds, 512 MiB, 2000 connections, 8 at once;
the machine was busy with other work, so +-30% between runs):

    relay        upload MiB/s  connections/s
    direct               1313           3521
    asyncio              1500           2574
    uvloop               1297           1923
    splice                880           1868
    haproxy               505           2442

splice is not faster than the asyncio Protocol relay here (probably the blocking threads' wakeups and the
GIL round trip per splice call cost more than the copy they save at these rates), so the product relays
with plain asyncio Protocols. haproxy runs without its splice options and with its default 16 KiB buffers.

Run: .venv/bin/python bench/l4.py [--rounds 3] [--megabytes 512] [--connections 2000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import uvloop

from kubegate.ir.model import Endpoint, EndpointTable, L4Port, L4Service, RoutingTable
from kubegate.planes.proxy.l4 import L4Proxy

LB = "127.0.100.1"
CHUNK = 1 << 16


def _pin(cpu: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        if (os.cpu_count() or 1) > cpu:
            os.sched_setaffinity(0, {cpu})


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(ip: str, port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1) as s:
            s.shutdown(socket.SHUT_WR)
            s.recv(8)
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {ip}:{port} after {seconds} s")


# -- the backend: read to EOF, answer with the byte count ------------------------------------------------


def _sink(conn: socket.socket) -> None:
    total = 0
    with conn:
        while data := conn.recv(1 << 18):
            total += len(data)
        conn.sendall(struct.pack("!Q", total))


def run_backend(port: int) -> None:
    _pin(0)
    with socket.create_server(("127.0.0.1", port), backlog=1024) as server:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_sink, args=(conn,), daemon=True).start()


# -- relays --------------------------------------------------------------------------------------------


def run_kubegate(loop_name: str, port: int, backend: int) -> None:
    _pin(1)

    svc = L4Service(
        name="bench/sink",
        type="LoadBalancer",
        load_balancer_ips=(LB,),
        ports=(L4Port(name="tcp", protocol="TCP", port=port, cluster="sink"),),
    )
    routing = RoutingTable(services=(svc,))
    endpoints = EndpointTable(clusters={"sink": (Endpoint(ip="127.0.0.1", port=backend),)})

    async def main() -> None:
        proxy = L4Proxy(routing, endpoints)
        await proxy.start()
        if proxy.errors:
            raise SystemExit(str(proxy.errors))
        await asyncio.Event().wait()

    if loop_name == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())


def _splice_one_way(src: socket.socket, dst: socket.socket, done: Callable[[], None]) -> None:
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer, larger splices
    try:
        while True:
            n = os.splice(src.fileno(), write_end, 1 << 20)
            if n == 0:
                dst.shutdown(socket.SHUT_WR)
                break
            while n:
                n -= os.splice(read_end, dst.fileno(), n)
    except OSError:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)
    finally:
        os.close(read_end)
        os.close(write_end)
        done()


def _splice_pair(client: socket.socket, backend: int) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", backend), timeout=5)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    remaining = [2]
    lock = threading.Lock()

    def done() -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                client.close()
                upstream.close()

    threading.Thread(target=_splice_one_way, args=(upstream, client, done), daemon=True).start()
    _splice_one_way(client, upstream, done)


def run_splice(port: int, backend: int) -> None:
    _pin(1)
    with socket.create_server((LB, port), backlog=1024) as server:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=_splice_pair, args=(conn, backend), daemon=True).start()


HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen sink
    bind {ip}:{port}
    server sink 127.0.0.1:{backend}
"""


# -- the client ----------------------------------------------------------------------------------------


def upload(ip: str, port: int, megabytes: int) -> float:
    """MB/s for one connection sending ``megabytes`` MiB."""
    block = b"\x5a" * (1 << 20)
    started = time.perf_counter()
    with socket.create_connection((ip, port)) as s:
        for _ in range(megabytes):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(8)
    elapsed = time.perf_counter() - started
    if len(reply) != 8 or struct.unpack("!Q", reply)[0] != megabytes << 20:
        raise SystemExit(f"{ip}:{port}: the sink saw {reply!r}, not {megabytes << 20} bytes")
    return megabytes / elapsed


def short_connections(ip: str, port: int, count: int, concurrency: int) -> float:
    """Connections per second: 64 bytes up, half-close, 8 bytes back."""
    per_thread = count // concurrency
    failures: list[str] = []

    def worker() -> None:
        for _ in range(per_thread):
            try:
                with socket.create_connection((ip, port), timeout=10) as s:
                    s.sendall(b"x" * 64)
                    s.shutdown(socket.SHUT_WR)
                    if s.recv(8) != struct.pack("!Q", 64):
                        failures.append("bad reply")
            except OSError as e:
                failures.append(str(e))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{ip}:{port}: {len(failures)} failed connections, e.g. {failures[0]}")
    return per_thread * concurrency / elapsed


@contextlib.contextmanager
def process(args: list[str]) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def relay_command(name: str, port: int, backend: int, workdir: Path) -> list[str] | None:
    me = [sys.executable, __file__]
    if name in ("asyncio", "uvloop"):
        return [*me, "--serve-kubegate", name, str(port), str(backend)]
    if name == "splice":
        return [*me, "--serve-splice", str(port), str(backend)]
    if name == "haproxy":
        binary = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
        )
        if binary is None:
            return None
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(ip=LB, port=port, backend=backend))
        return ["taskset", "-c", "1", binary, "-db", "-f", str(cfg)]
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="one round, 128 MiB, 400 connections")
    parser.add_argument("--serve-backend", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-kubegate", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve-splice", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_backend:
        run_backend(args.serve_backend)
    elif args.serve_kubegate:
        loop_name, port, backend = args.serve_kubegate
        run_kubegate(loop_name, int(port), int(backend))
    elif args.serve_splice:
        run_splice(*args.serve_splice)
    else:
        compare(args)


def compare(args: argparse.Namespace) -> None:
    if args.quick:
        args.rounds, args.megabytes, args.connections = 1, 128, 400

    _pin(0)
    relays = ["direct", "asyncio", "uvloop", "splice", "haproxy"]
    throughput: dict[str, list[float]] = {r: [] for r in relays}
    rate: dict[str, list[float]] = {r: [] for r in relays}
    backend = _free_port("127.0.0.1")
    with (
        tempfile.TemporaryDirectory() as tmp,
        process([sys.executable, __file__, "--serve-backend", str(backend)]),
    ):
        _wait_listening("127.0.0.1", backend)
        for _ in range(args.rounds):
            for name in relays:
                if name == "direct":
                    ip, port, ctx = "127.0.0.1", backend, contextlib.nullcontext()
                else:
                    ip, port = LB, _free_port(LB)
                    command = relay_command(name, port, backend, Path(tmp))
                    if command is None:
                        continue
                    ctx = process(command)  # type: ignore[assignment]
                with ctx:
                    _wait_listening(ip, port)
                    throughput[name].append(upload(ip, port, args.megabytes))
                    rate[name].append(short_connections(ip, port, args.connections, args.concurrency))

    print(f"{'relay':<10} {'upload MiB/s':>14} {'connections/s':>14}   (median of {args.rounds})")
    for name in relays:
        if throughput[name]:
            mib_s, conn_s = statistics.median(throughput[name]), statistics.median(rate[name])
            print(f"{name:<10} {mib_s:>14.0f} {conn_s:>14.0f}")


if __name__ == "__main__":
    main()
