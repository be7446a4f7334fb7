"""Build throwaway hosts as network namespaces: a node with a bridge, pods behind it.

Names are unique per test run (namespaces are machine-wide) and everything is torn down in teardown():
recorded processes killed first, then the namespaces deleted. Sysctls are set only inside the test
namespaces, never in the root one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

# a pod's HTTP server: answers every GET with its own name
POD_SERVER = """
import http.server, sys
name = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = name.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer((sys.argv[1], 8080), H)
server.request_queue_size = 128
server.serve_forever()
"""


def require_netns() -> None:
    """Skip with the reason when this machine cannot run namespace tests."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    for tool in ("ip", "nft", "curl", "ping"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (Debian packages iproute2, nftables, curl, iputils-ping)")


@contextlib.contextmanager
def scratch_namespace(name: str = "") -> Iterator[str]:
    """An empty network namespace (named ``name``, or uniquely), deleted afterwards; skips the test
    without root, ip or nft."""
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs root, ip and nft")
    name = name or f"kgns{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr.strip()}")
    return result


@dataclass
class Topology:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def name(self, role: str) -> str:
        return f"kg{self.tag}-{role}"

    def netns(self, role: str) -> str:
        name = self.name(role)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        return name

    def run(
        self, netns: str, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", netns, *argv, check=check, timeout=timeout)

    def node_with_pods(self, pod_ips: list[str]) -> tuple[str, list[str]]:
        """A node namespace with bridge 10.244.0.1/24 and one pod namespace per IP, each serving HTTP."""
        node = self.netns("node")
        self.run(node, "ip", "link", "add", "br0", "type", "bridge")
        self.run(node, "ip", "addr", "add", "10.244.0.1/24", "dev", "br0")
        self.run(node, "ip", "link", "set", "br0", "up")
        self.run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # a real node has a default route; without one, connecting to a ClusterIP fails in the routing
        # decision before netfilter's output hook could DNAT it
        self.run(node, "ip", "route", "add", "default", "dev", "br0")
        pods = []
        for index, ip in enumerate(pod_ips):
            pod = self.netns(f"pod{index}")
            host_side, pod_side = f"vh{self.tag}{index}", f"vp{self.tag}{index}"
            sh("ip", "link", "add", host_side, "type", "veth", "peer", "name", pod_side)
            sh("ip", "link", "set", host_side, "netns", node)
            sh("ip", "link", "set", pod_side, "netns", pod)
            self.run(node, "ip", "link", "set", host_side, "master", "br0", "up")
            # hairpin: a pod reaching its own Service may be DNATed back to itself through the bridge
            self.run(node, "bridge", "link", "set", "dev", host_side, "hairpin", "on")
            self.run(pod, "ip", "addr", "add", f"{ip}/24", "dev", pod_side)
            self.run(pod, "ip", "link", "set", pod_side, "up")
            self.run(pod, "ip", "route", "add", "default", "via", "10.244.0.1")
            server = subprocess.Popen(
                ["ip", "netns", "exec", pod, sys.executable, "-c", POD_SERVER, ip, f"pod-{index}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.processes.append(server)
            pods.append(pod)
        for ip in pod_ips:
            self.wait_http(node, f"http://{ip}:8080/")
        return node, pods

    def curl(self, netns: str, url: str, timeout: float = 1.0) -> str | None:
        result = self.run(
            netns, "curl", "-s", "--max-time", str(timeout), url, check=False, timeout=timeout + 5
        )
        return result.stdout if result.returncode == 0 else None

    def answer(self, netns: str, url: str, tries: int = 3) -> str | None:
        """The body of a positive check, allowing for a loaded machine: a few tries, 3 s each."""
        for _ in range(tries):
            body = self.curl(netns, url, timeout=3.0)
            if body is not None:
                return body
        return None

    def wait_http(self, netns: str, url: str, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.curl(netns, url) is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{url} not answering from {netns} after {seconds} s")

    def teardown(self) -> None:
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for name in reversed(self.namespaces):
            sh("ip", "netns", "del", name, check=False)
