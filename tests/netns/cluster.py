"""A two-node cluster built from network namespaces, for end-to-end tests of the kernel path.

Layout (every address fixed, every name unique per run through ``Topology.tag``)::

    lan  (namespace holding only the bridge br0: the "switch"; nothing touches the host)
     |-- node1 192.168.50.11   cbr0 10.244.1.1/24 -- pods 10.244.1.2, 10.244.1.3, ...
     |-- node2 192.168.50.12   cbr0 10.244.2.1/24 -- pods 10.244.2.2, 10.244.2.3, ...
     |-- client 192.168.50.100 (outside the cluster: no routes to pods or ClusterIPs)
     '-- any further LAN host added with ``lan_host`` (a load balancer, a gateway)

Each node routes the other node's pod CIDR through the other node's LAN address, as a flat L2 pod network
(e.g. flannel's host-gw backend) would. Veths are created directly inside their namespaces
(``ip link add ... netns``), so the root namespace never sees an interface.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns.topology import Topology, sh

LAN_PREFIX = 24
CLIENT_IP = "192.168.50.100"

# a pod's HTTP/1.1 server: "/" answers its name, "/client" its name and the peer address it saw (to tell
# a masqueraded connection from one that kept the client's address); keep-alive so a test can hold one
# TCP connection across rule changes
POD_SERVER = """
import http.server, sys
name = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        text = f"{name} {self.client_address[0]}" if self.path.startswith("/client") else name
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args): pass
class S(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
S((sys.argv[1], 8080), H).serve_forever()
"""

# a probe held open in a namespace: one GET every INTERVAL seconds until stdin closes (or MAX seconds),
# one line per request: "ok <local port> <unix time> <body>" or "fail <local port> <unix time> <error>".
# Mode "keep" sends every request on one keep-alive connection (the local port shows it stayed the same
# TCP flow); mode "new" opens a new connection for each. The time (one clock for every namespace) tells
# which requests came after a change.
PROBE = """
import http.client, sys, threading, time
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
interval, limit = float(sys.argv[4]), float(sys.argv[5])
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
conn = None
deadline = time.monotonic() + limit
while not done.is_set() and time.monotonic() < deadline:
    local = 0
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.connect()
        local = conn.sock.getsockname()[1]
        conn.request("GET", "/")
        body = conn.getresponse().read().decode()
        print("ok", local, time.time(), body, flush=True)
    except Exception as error:
        print("fail", local, time.time(), type(error).__name__, error, flush=True)
        conn.close() if conn is not None else None
        conn = None
    if mode == "new" and conn is not None:
        conn.close()
        conn = None
    done.wait(interval)
"""


@dataclass(frozen=True)
class Pod:
    name: str
    netns: str
    ip: str
    node: str


@dataclass(frozen=True)
class Node:
    name: str
    netns: str
    address: str
    pod_cidr: str
    bridge_ip: str


@dataclass(frozen=True)
class ProbeLine:
    ok: bool
    local_port: int
    at: float  # unix time the request finished
    text: str


@dataclass
class Probe:
    """A probe process (see PROBE) and what it printed so far. Its output is read from the raw pipe
    (select, then os.read), never through a buffered reader that select cannot see into."""

    process: subprocess.Popen[bytes]
    lines: list[ProbeLine] = field(default_factory=list)
    _partial: bytes = b""

    def _read(self, deadline: float) -> bool:
        """Take whatever output arrives before `deadline`; False at end of output or deadline."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        for raw in complete:
            status, port, at, text = [*raw.decode(errors="replace").split(" ", 3), "", "", ""][:4]
            self.lines.append(ProbeLine(status == "ok", int(port or 0), float(at or 0), text))
        return True

    def wait_first(self, seconds: float = 10) -> ProbeLine:
        """The first line, waiting at most `seconds` for it."""
        deadline = time.monotonic() + seconds
        while not self.lines:
            if not self._read(deadline):
                raise RuntimeError(f"probe printed nothing within {seconds} s")
        return self.lines[0]

    def wait_after(self, moment: float, count: int = 3, seconds: float = 10) -> None:
        """Wait until `count` requests finished after unix time `moment` (at most `seconds`)."""
        deadline = time.monotonic() + seconds
        while sum(line.at > moment for line in self.lines) < count:
            if not self._read(deadline):
                raise RuntimeError(f"probe made no {count} requests after the change within {seconds} s")

    def stop(self, seconds: float = 10) -> list[ProbeLine]:
        """Close its stdin (the probe's stop signal) and collect every line."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        deadline = time.monotonic() + seconds
        while self._read(deadline):
            pass
        self.process.wait(max(0.1, deadline - time.monotonic()))
        return self.lines


@dataclass
class Cluster:
    topo: Topology
    workdir: Path
    lan: str = ""
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    client: str = ""
    kubegate_processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    _links: int = 0

    @classmethod
    def build(cls, topo: Topology, workdir: Path, pods_per_node: int = 2, node_count: int = 2) -> Cluster:
        cluster = cls(topo, workdir)
        cluster.lan = topo.netns("lan")
        topo.run(cluster.lan, "ip", "link", "add", "br0", "type", "bridge")
        topo.run(cluster.lan, "ip", "link", "set", "br0", "up")
        for index in range(1, node_count + 1):
            cluster._add_node(index, pods_per_node)
        for node in cluster.nodes:
            for other in cluster.nodes:
                if other is not node:
                    topo.run(node.netns, "ip", "route", "add", other.pod_cidr, "via", other.address)
        cluster.client = cluster.lan_host("client", CLIENT_IP)
        for pod in cluster.pods:
            cluster.wait_http(cluster.node(pod.node).netns, f"http://{pod.ip}:8080/")
        return cluster

    def _veth(self, netns_a: str, name_a: str, netns_b: str, name_b: str) -> None:
        # created inside both namespaces at once: names need only be unique there
        self.topo.run(
            netns_a, "ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", netns_b
        )

    def lan_host(self, role: str, address: str, *extra: str) -> str:
        """A namespace on the LAN with `address` (and `extra` addresses, e.g. a LoadBalancer IP) on lan0."""
        netns = self.topo.netns(role)
        self._links += 1
        port = f"p{self._links}"
        self._veth(self.lan, port, netns, "lan0")
        self.topo.run(self.lan, "ip", "link", "set", port, "master", "br0", "up")
        self.topo.run(netns, "ip", "addr", "add", f"{address}/{LAN_PREFIX}", "dev", "lan0")
        for ip in extra:
            self.topo.run(netns, "ip", "addr", "add", f"{ip}/32", "dev", "lan0")
        self.topo.run(netns, "ip", "link", "set", "lan0", "up")
        return netns

    def _add_node(self, index: int, pods_per_node: int) -> None:
        name = f"node{index}"
        address = f"192.168.50.{10 + index}"
        netns = self.lan_host(name, address)
        bridge_ip = f"10.244.{index}.1"
        node = Node(name, netns, address, f"10.244.{index}.0/24", bridge_ip)
        run = self.topo.run
        run(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # replies between pods on one bridge must pass conntrack to be un-DNATed (NETNS-NOTES)
        run(netns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
        # a default route: without one, connecting to a ClusterIP fails in routing before DNAT
        run(netns, "ip", "route", "add", "default", "dev", "lan0")
        run(netns, "ip", "link", "add", "cbr0", "type", "bridge")
        run(netns, "ip", "addr", "add", f"{bridge_ip}/24", "dev", "cbr0")
        run(netns, "ip", "link", "set", "cbr0", "up")
        self.nodes.append(node)
        for number in range(pods_per_node):
            self._add_pod(node, index, number)

    def _add_pod(self, node: Node, node_index: int, number: int) -> None:
        name = f"{node.name}-pod{number}"
        ip = f"10.244.{node_index}.{2 + number}"
        netns = self.topo.netns(f"n{node_index}p{number}")
        host_side = f"veth{number}"
        self._veth(node.netns, host_side, netns, "eth0")
        run = self.topo.run
        run(node.netns, "ip", "link", "set", host_side, "master", "cbr0", "up")
        # hairpin: a pod reaching its own Service may be DNATed back to itself through the bridge
        run(node.netns, "bridge", "link", "set", "dev", host_side, "hairpin", "on")
        run(netns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        run(netns, "ip", "link", "set", "eth0", "up")
        run(netns, "ip", "route", "add", "default", "via", node.bridge_ip)
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", POD_SERVER, ip, name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.topo.processes.append(server)
        self.pods.append(Pod(name, netns, ip, node.name))

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def pod(self, name: str) -> Pod:
        return next(pod for pod in self.pods if pod.name == name)

    def kubegate(self, netns: str, label: str, *argv: str) -> subprocess.Popen[bytes]:
        """Start `kubegate ARGV...` in `netns`, its log in the work directory (shown by ``logs``)."""
        log = (self.workdir / f"{label}.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "kubegate.cli", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=os.getcwd(),
        )
        log.close()
        self.kubegate_processes.append(process)
        return process

    def logs(self, tail: int = 3000) -> str:
        """The end of every process log, for a failing test's report."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}"
            for path in sorted(self.workdir.glob("*.log"))
        )

    def bodies(self, netns: str, url: str, count: int, timeout: float = 3.0) -> list[str | None]:
        """`count` GETs of `url` from `netns`, each on a new connection (one curl run): each answer's
        body, None for a failed one."""
        result = self.topo.run(
            netns,
            "curl",
            "-s",
            "-H",
            "Connection: close",
            "--connect-timeout",
            str(min(timeout, 1.0)),
            "--max-time",
            str(timeout),
            "-w",
            "|%{http_code}\\n",
            f"{url}?[1-{count}]",
            check=False,
            timeout=count * (timeout + 1) + 5,
        )
        answers: list[str | None] = []
        for line in result.stdout.splitlines():
            body, _, code = line.rpartition("|")
            answers.append(body if code == "200" else None)
        # a transfer curl could not even start prints nothing: count it as failed
        return answers + [None] * (count - len(answers))

    def seen(self, netns: str, url: str, count: int = 30, timeout: float = 3.0) -> set[str | None]:
        return set(self.bodies(netns, url, count, timeout))

    def wait_seen(self, netns: str, url: str, expected: set[str], seconds: float = 15) -> float:
        """Seconds until `count` requests are answered by exactly `expected` (raises after `seconds`)."""
        start = time.monotonic()
        last: set[str | None] = set()
        while time.monotonic() - start < seconds:
            last = self.seen(netns, url, 20)
            if last == expected:
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"{url} from {netns}: answered by {last}, not {expected}, after {seconds} s")

    def wait_http(self, netns: str, url: str, seconds: float = 15) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.topo.curl(netns, url) is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{url} not answering from {netns} after {seconds} s\n{self.logs()}")

    def probe(self, netns: str, host: str, port: int, mode: str, interval: float = 0.05) -> Probe:
        """Start a probe (see PROBE) in `netns` against host:port; at most 120 s of requests."""
        process = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                netns,
                sys.executable,
                "-c",
                PROBE,
                host,
                str(port),
                mode,
                str(interval),
                "120",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        probe = Probe(process)
        self.probes.append(probe)
        return probe

    def teardown(self) -> None:
        """Stop everything this cluster started, even after a failure: kubegate processes get SIGTERM
        first (agents remove their tables, the load balancer stops its haproxy), then whatever still runs
        in one of our namespaces is killed by its PID, then the namespaces go."""
        for probe in self.probes:
            if probe.process.poll() is None:
                probe.process.kill()
                probe.process.wait(5)
        for process in self.kubegate_processes:
            if process.poll() is None:
                process.terminate()
        for process in self.kubegate_processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        for netns in self.topo.namespaces:
            pids = sh("ip", "netns", "pids", netns, check=False)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        self.topo.teardown()
