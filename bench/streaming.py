"""Streaming through kubegate: a 1 GiB upload and a 1 GiB download, with the proxy's memory sampled.

The proxy (`kubegate serve --workers 1`, a separate process) sits between a raw socket client and a
backend that discards uploads and generates downloads. The proxy's resident memory (VmRSS from /proc) is
sampled every 50 ms; the figure is its peak growth over the idle process, which must stay flat (a few MiB
of buffers), not grow with the body. The direct baseline is the same transfer without the proxy.

Run: .venv/bin/python bench/streaming.py [--mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHUNK = 256 * 1024
MANIFESTS = """\
apiVersion: v1
kind: Service
metadata: {{name: sink}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: v1
kind: Endpoints
metadata: {{name: sink}}
subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: http, port: {port}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: stream
  # unlimited body size (the default limit is ingress-nginx's 1m)
  annotations: {{nginx.ingress.kubernetes.io/proxy-body-size: "0"}}
spec:
  rules:
    - http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: sink, port: {{number: 80}}}}}}}}
"""


async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """POST: read Content-Length bytes and discard them; GET /N: send N bytes."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            while length:
                data = await reader.read(min(length, CHUNK))
                if not data:
                    return
                length -= len(data)
            size = int(target.strip("/")) if method == "GET" else 0
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            block = b"x" * CHUNK
            while size:
                piece = block[: min(size, CHUNK)]
                writer.write(piece)
                size -= len(piece)
                await writer.drain()
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def run_backend(ready: threading.Event, port_box: list[int]) -> None:
    async def main() -> None:
        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        port_box.append(server.sockets[0].getsockname()[1])
        ready.set()
        await server.serve_forever()

    asyncio.run(main())


def read_response(sock: socket.socket) -> int:
    """Read one response; return its body size."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    received = len(rest)
    while received < length:
        piece = sock.recv(1 << 20)
        if not piece:
            raise ConnectionError("closed mid-body")
        received += len(piece)
    return received


def transfer(port: int, size: int) -> tuple[float, float]:
    """(upload seconds, download seconds) for `size` bytes each way."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(f"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())
        block = b"y" * CHUNK
        left = size
        while left:
            sent = sock.send(block[: min(left, CHUNK)])
            left -= sent
        read_response(sock)
        upload = time.perf_counter() - started
        started = time.perf_counter()
        sock.sendall(f"GET /{size} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        if read_response(sock) != size:
            raise RuntimeError("short download")
        return upload, time.perf_counter() - started


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=1024, help="bytes each way, in MiB (default 1024)")
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    ready = threading.Event()
    port_box: list[int] = []
    threading.Thread(target=run_backend, args=(ready, port_box), daemon=True).start()
    ready.wait(10)
    backend_port = port_box[0]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        proxy_port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "stream.yaml").write_text(MANIFESTS.format(port=backend_port))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubegate.cli",
                "serve",
                tmp,
                "--workers",
                "1",
                "--listen",
                f"127.0.0.1:{proxy_port}",
                "--tls-listen",
                "off",
                "--admin-listen",
                "127.0.0.1:0",
                "--access-log",
                "off",
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", proxy_port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            idle = rss_kib(proc.pid)
            peak = idle
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, rss_kib(proc.pid))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            direct = transfer(backend_port, size)
            proxied = transfer(proxy_port, size)
            done.set()
            sampler.join()
        finally:
            proc.terminate()
            proc.wait(10)
    mib = size / (1 << 20)
    print(f"\n{args.mib} MiB each way, one keep-alive connection")
    print(f"{'path':<10} {'upload MiB/s':>13} {'download MiB/s':>15}")
    print(f"{'direct':<10} {mib / direct[0]:>13.0f} {mib / direct[1]:>15.0f}")
    print(f"{'kubegate':<10} {mib / proxied[0]:>13.0f} {mib / proxied[1]:>15.0f}")
    print(
        f"kubegate RSS: idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
        f"growth {(peak - idle) / 1024:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
