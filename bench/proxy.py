"""HTTP proxy benchmark: wrk against the backend directly, through nginx, and through kubegate.

All three run on this machine in the same session, interleaved over several rounds, so their figures are
comparable. Layout on a 2-core machine (documented in the README):
- CPU 1: the proxy under test (nginx with one worker, or `kubegate serve --workers 1`), alone;
- CPU 0: wrk (one thread) and the backend (nginx, one worker, answering a small fixed body).
The proxy is the bottleneck in the proxied runs; "direct" shows what the backend+wrk core can do.

Targets (issue "The embedded gateway"): kubegate >= 0.6x nginx req/s, p99 <= 2x nginx's.

Run: .venv/bin/python bench/proxy.py [--rounds 3] [--seconds 10] [--connections 50] [--quick] [--profile]
Needs the Debian packages nginx (or nginx-light) and wrk; --profile also needs py-spy (pip install py-spy):
it samples kubegate during one more wrk run and prints where its time goes (own time per line, and time
including callees per function).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "bench.local"
BODY = "hello from the backend\n"


@dataclass(frozen=True)
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    # wrk's "Socket errors" by kind (connect, read, write, timeout) and its non-2xx/3xx count; wrk
    # counts a connection the server closes as a read error, a request slower than 2 s as a timeout
    socket_errors: dict[str, int]
    non2xx: int
    requests: int = 0
    # CPU time the proxy's processes spent per request during the run (user + system), in µs: unlike
    # req/s it hardly moves when other work shares the machine, so it compares the proxies' efficiency
    # even on a busy host. 0 when not measured (direct).
    cpu_us_per_request: float = 0.0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (nginx's workers are children)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: split after its closing one
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    total = 0.0
    wanted = {pid}
    changed = True
    while changed:
        changed = False
        for child, parent in parents.items():
            if parent in wanted and child not in wanted:
                wanted.add(child)
                changed = True
    for member in wanted:
        total += times.get(member, 0.0)
    return total


def measured(proc: subprocess.Popen[bytes], port: int, seconds: int, connections: int) -> Result:
    """One wrk run against a proxy, with the proxy's CPU time per request."""
    before = tree_cpu_seconds(proc.pid)
    result = run_wrk(port, seconds, connections, cpu=0)
    spent = tree_cpu_seconds(proc.pid) - before
    per_request = spent / result.requests * 1e6 if result.requests else 0.0
    return dataclasses.replace(result, cpu_us_per_request=per_request)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {stderr.strip()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {seconds} s")


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") and os.cpu_count() != 1 else argv


NGINX_COMMON = """
worker_processes 1;
daemon off;
pid {dir}/nginx-{name}.pid;
error_log {dir}/nginx-{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body-{name};
  proxy_temp_path {dir}/proxy-{name};
  fastcgi_temp_path {dir}/fastcgi-{name};
  uwsgi_temp_path {dir}/uwsgi-{name};
  scgi_temp_path {dir}/scgi-{name};
  keepalive_requests 1000000;
  {body}
}}
"""

BACKEND = """
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{ default_type text/plain; return 200 "{text}"; }}
  }}
"""

# configured like kubegate's defaults: HTTP/1.1 keep-alive upstream, forwarding headers set
NGINX_PROXY = """
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    server_name {host};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
"""

MANIFESTS = """\
apiVersion: v1
kind: Service
metadata: {{name: backend}}
spec:
  ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: backend}}
subsets:
  - addresses: [{{ip: 127.0.0.1}}]
    ports: [{{name: http, port: {backend}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: bench}}
spec:
  rules:
    - host: {host}
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {{service: {{name: backend, port: {{number: 80}}}}}}
"""


@contextlib.contextmanager
def process(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nginx(
    workdir: Path, name: str, body: str, port: int, cpu: int
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    conf = workdir / f"nginx-{name}.conf"
    conf.write_text(NGINX_COMMON.format(dir=workdir, name=name, body=body))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return process(pinned(cpu, [binary, "-c", str(conf), "-p", str(workdir)]), port)


def kubegate(
    workdir: Path, backend: int, port: int, cpu: int
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    manifests = workdir / "manifests"
    manifests.mkdir(exist_ok=True)
    (manifests / "bench.yaml").write_text(MANIFESTS.format(backend=backend, host=HOST))
    argv = [
        sys.executable,
        "-m",
        "kubegate.cli",
        "serve",
        str(manifests),
        "--workers",
        "1",
        "--listen",
        f"127.0.0.1:{port}",
        "--tls-listen",
        "off",
        "--admin-listen",
        f"127.0.0.1:{free_port()}",
        "--access-log",
        "off",
    ]
    return process(pinned(cpu, argv), port)


_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(port: int, seconds: int, connections: int, cpu: int) -> Result:
    argv = pinned(
        cpu,
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Host: {HOST}",
            f"http://127.0.0.1:{port}/",
        ],
    )
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    latency = {pct: float(value) * _UNITS[unit] for pct, value, unit in _LATENCY.findall(out)}
    socket_errors = {kind: int(n) for kind, n in re.findall(r"(connect|read|write|timeout) (\d+)", out)}
    non2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(non2xx_match.group(1)) if non2xx_match else 0
    errors = sum(socket_errors.values()) + non2xx
    total = re.search(r"(\d+) requests in", out)
    return Result(
        float(rps.group(1)),
        latency.get("50", 0.0),
        latency.get("99", 0.0),
        errors,
        socket_errors,
        non2xx,
        int(total.group(1)) if total else 0,
    )


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile(spy: str, workdir: Path, backend_port: int, args: argparse.Namespace) -> None:
    """Sample kubegate while wrk loads it; print the frames that take the most samples."""
    port = free_port()
    raw = workdir / "profile.txt"
    with kubegate(workdir, backend_port, port, cpu=1) as proc:
        assert isinstance(proc, subprocess.Popen)
        run_wrk(port, 1, args.connections, cpu=0)  # warm-up
        wrk = subprocess.Popen(
            pinned(
                0,
                [
                    *("wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds + 2}s"),
                    *("-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/"),
                ],
            ),
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(1)
            record = [spy, "record", "-p", str(proc.pid), "-d", str(args.seconds), "-r", "250"]
            record += ["-f", "raw", "-o", str(raw)]
            subprocess.run(record, capture_output=True, timeout=args.seconds + 30, check=True)
        finally:
            wrk.wait(timeout=args.seconds + 30)
    print_profile(raw.read_text())


def print_profile(raw: str, top: int = 25) -> None:
    # py-spy's raw format: "frame;frame;...;leaf count" per distinct stack, root first
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + samples
        # a function counted once per stack, whichever of its lines are on it
        for function in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            inclusive[function] = inclusive.get(function, 0) + samples
    if not total:
        print("\nprofile: no samples")
        return
    for title, table in (("own time per line", own), ("time including callees", inclusive)):
        print(f"\nkubegate profile, {title} ({total} samples):")
        for frame, samples in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{100 * samples / total:6.1f}%  {frame or '(native)'}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke test")
    parser.add_argument(
        "--profile", action="store_true", help="after the rounds, sample kubegate under load with py-spy"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            print(
                f"bench/proxy.py: {tool} is not installed (apt-get install wrk nginx-light)", file=sys.stderr
            )
            return 2
    spy = py_spy()
    if args.profile and spy is None:
        print("bench/proxy.py: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        print("bench/proxy.py: nginx is not installed (apt-get install nginx-light)", file=sys.stderr)
        return 2
    results: dict[str, list[Result]] = {"direct": [], "nginx": [], "kubegate": []}
    with tempfile.TemporaryDirectory(prefix="kubegate-bench-") as tmp:
        workdir = Path(tmp)
        backend_port = free_port()
        backend = BACKEND.format(port=backend_port, text=BODY.replace("\n", "\\n"))
        with nginx(workdir, "backend", backend, backend_port, cpu=0):
            for round_no in range(1, args.rounds + 1):
                results["direct"].append(run_wrk(backend_port, args.seconds, args.connections, cpu=0))
                port = free_port()
                body = NGINX_PROXY.format(backend=backend_port, port=port, host=HOST)
                with nginx(workdir, "proxy", body, port, cpu=1) as proc:
                    results["nginx"].append(measured(proc, port, args.seconds, args.connections))
                port = free_port()
                with kubegate(workdir, backend_port, port, cpu=1) as proc:
                    run_wrk(port, 1, args.connections, cpu=0)  # warm-up
                    results["kubegate"].append(measured(proc, port, args.seconds, args.connections))
                print(f"round {round_no}/{args.rounds} done", file=sys.stderr)
            if args.profile and spy is not None:
                profile(spy, workdir, backend_port, args)
    print_table(results, args)
    return 0


def print_table(results: dict[str, list[Result]], args: argparse.Namespace) -> None:
    def median(name: str, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in results[name]))

    print(
        f"\nwrk -t1 -c{args.connections} -d{args.seconds}s, keep-alive, {len(BODY)}-byte responses, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'target':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU us/req':>11}")
    for name, runs in results.items():
        errors = sum(r.errors for r in runs)
        cpu = median(name, "cpu_us_per_request")
        print(
            f"{name:<10} {median(name, 'requests_per_second'):>10.0f} {median(name, 'p50_ms'):>8.2f} "
            f"{median(name, 'p99_ms'):>8.2f} {errors:>7} {f'{cpu:.1f}' if cpu else '-':>11}"
        )
    for name, runs in results.items():
        for round_no, r in enumerate(runs, 1):
            if r.errors:
                kinds = ", ".join(f"{kind} {n}" for kind, n in r.socket_errors.items() if n)
                print(f"  {name} round {round_no}: socket errors: {kinds or 'none'}; non-2xx/3xx: {r.non2xx}")
    rps_ratio = median("kubegate", "requests_per_second") / median("nginx", "requests_per_second")
    p99_ratio = median("kubegate", "p99_ms") / max(median("nginx", "p99_ms"), 1e-9)
    print(f"\nkubegate/nginx req/s: {rps_ratio:.2f}x (target >= 0.60x)")
    print(f"kubegate/nginx p99:   {p99_ratio:.2f}x (target <= 2.00x)")
    cpu_ratio = median("nginx", "cpu_us_per_request") / max(median("kubegate", "cpu_us_per_request"), 1e-9)
    print(
        f"nginx/kubegate CPU per request: {cpu_ratio:.2f}x (the req/s ratio both would reach CPU-bound on "
        "an otherwise idle core; robust to other load on the machine)"
    )


if __name__ == "__main__":
    sys.exit(main())
