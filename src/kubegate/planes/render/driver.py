"""Apply rendered configuration to the tools that carry it: nft (kernel mode) and haproxy.

The renderers are pure; this is the one place that runs commands. Every change is validated by the tool
itself before it is in force (`haproxy -c` before a reload; for nft the `nft -f` transaction, which the
kernel commits whole or not at all), and on failure the last good configuration stays in force and the
error names what the tool said.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from kubegate.planes.render import nftelements, nftlink
from kubegate.planes.render.nftables import RenderedNftables, StagedNftables, without_cycle_collection
from kubegate.planes.render.nftdiff import incremental, incremental_structured

COMMAND_TIMEOUT = 120.0


class ApplyError(Exception):
    """The tool refused the configuration or could not be run; the last good one is still in force."""


def _run(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise ApplyError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ApplyError(f"{' '.join(argv[:3])} did not finish within {COMMAND_TIMEOUT:.0f} s") from None


def _first_lines(text: str, count: int = 8) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    more = f" (+{len(lines) - count} more lines)" if len(lines) > count else ""
    return "; ".join(lines[:count]) + more


class NftDriver:
    """Owns one nftables table: applies rulesets, notices drift, removes the table on shutdown.

    ``apply`` takes the rendered text or, better, an ``NftRenderer`` rendering (``RenderedNftables``). The
    first apply loads the whole ruleset; later ones load only the difference to the last applied one
    (``nftdiff``: one atomic ``nft -f`` of flushed and re-added chains and set elements; for renderings
    only the Services whose group changed are compared) and fall back to a full replace when the diff
    declines or the kernel refuses it.

    A first load (no table of ours in the kernel yet: the agent's start, or after someone deleted it) of
    a rendering is staged (``_load_staged``): the table without its base chains, then the shared sets'
    elements over netlink, then the base chains in one transaction. A table without base chains sees no
    packet, so until the last step nothing differs from no table at all, and after it the kernel holds
    what one ``nft -f`` of the text would have loaded (the netns tests compare the listings); at 10,000
    Services x 10 endpoints it takes a quarter of nft's time. A table that is already there is replaced by
    one ``nft -f`` of the text, so the old rules serve until the new ones do.

    No separate ``nft -c`` before a load: one ``nft -f`` file is one netlink transaction, which the kernel
    either commits whole or aborts with nothing changed, so the load is its own validation (and a check
    first doubled the cost: 4.5 s more at 10,000 Services). ``validate`` stays for callers that only check.

    Drift costs nothing on the apply path. ``drifted()`` compares the table's kernel handle with the one
    recorded after the last apply, asked over netlink (``nftlink``: under a millisecond at any size, where
    ``nft list tables`` takes 2-4 s at 10,000 Services): it catches the table being deleted or replaced,
    not rules edited inside it. ``reapply_if_drifted()`` (the periodic check) also compares a full ``nft
    list table`` listing with a baseline listing taken at the first periodic check after an apply; that
    listing takes seconds at 10,000 Services, so it is never done in apply(), and later checks list only
    when the namespace's ruleset generation moved since the last listing (someone committed something).
    An edit made between an apply and the next periodic check becomes part of that baseline.
    """

    def __init__(self, table: str = "kubegate", family: str = "inet", netns: str | None = None) -> None:
        self.table = table
        self.family = family
        self.netns = netns
        # run inside a network namespace (tests, or an agent managing a namespace it does not live in)
        self._prefix = ["ip", "netns", "exec", netns] if netns else []
        self._applied: str | RenderedNftables | None = None
        self._handle: str | None = None
        self._baseline: str | None = None
        # the ruleset generation at the last listing that found the table as the baseline (None: list)
        self._seen_generation: int | None = None
        self._lock = threading.RLock()
        self.applies = 0
        # how many applies loaded only the difference (the rest replaced the whole table)
        self.incremental_applies = 0
        # the last script sent to nft -f and how long nft took (the kernel part of an apply)
        self.last_script = ""
        self.last_nft_seconds = 0.0
        # whether the last apply that changed something loaded only the difference
        self.last_incremental = False
        # the steps of the last full load and their seconds: "nft" for one nft -f of the whole text, or
        # "skeleton", "elements" and "base" for a staged first load (see _load_staged)
        self.last_load_steps: dict[str, float] = {}

    @property
    def applied(self) -> str | None:
        """The text of the ruleset in force (built from a rendering when asked), None before any. The
        rendering itself is kept, so the next apply still diffs by groups."""
        if isinstance(self._applied, RenderedNftables):
            return self._applied.text()
        return self._applied

    def _nft(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return _run([*self._prefix, "nft", *args], stdin)

    def validate(self, ruleset: str) -> None:
        result = self._nft("-c", "-f", "-", stdin=ruleset)
        if result.returncode != 0:
            raise ApplyError(f"nft rejected the ruleset: {_first_lines(result.stderr)}")

    def _load(self, script: str) -> None:
        started = time.perf_counter()
        result = self._nft("-f", "-", stdin=script)
        self.last_nft_seconds = time.perf_counter() - started
        self.last_script = script
        if result.returncode != 0:
            # one transaction: the kernel kept the previous table as it was
            raise ApplyError(f"nft rejected the ruleset: {_first_lines(result.stderr)}")

    def apply(self, ruleset: str | RenderedNftables) -> bool:
        """Load ``ruleset`` in one transaction. Returns False when it was already in force."""
        # the agent applies on its event loop and runs the periodic check in a worker thread
        with self._lock:
            return self._apply(ruleset)

    def _apply(self, ruleset: str | RenderedNftables) -> bool:
        previous = self._applied
        intact = previous is not None and not self.drifted()
        if intact and previous is not None:
            script = _difference(previous, ruleset, self.family, self.table)
            if script == "":
                # nothing the kernel would see differs; keep the newer rendering, which the next one
                # from the same renderer follows
                self._applied = ruleset
                return False
            if script is not None and self._try_load(script):
                self._applied = ruleset
                self._baseline = None
                self._seen_generation = None
                self.incremental_applies += 1
                self.applies += 1
                self.last_incremental = True
                return True
        self._load_full(ruleset)
        self._applied = ruleset
        self._handle = self.table_handle()
        self._baseline = None
        self._seen_generation = None
        self.applies += 1
        self.last_incremental = False
        return True

    def _load_full(self, ruleset: str | RenderedNftables) -> None:
        """Load a whole ruleset: staged when our table does not exist yet, else one nft -f of the text."""
        if (
            isinstance(ruleset, RenderedNftables)
            and self.table_handle() is None
            and self._load_staged(_staged(ruleset))
        ):
            return
        started = time.perf_counter()
        self._load(ruleset if isinstance(ruleset, str) else ruleset.text())
        self.last_load_steps = {"nft": time.perf_counter() - started}

    def _load_staged(self, staged: StagedNftables) -> bool:
        """A first load in three steps: nft -f of the skeleton (every chain but the base chains, the shared
        sets and maps empty: it touches no packet), the shared elements over netlink (``nftelements``: at
        10,000 Services x 10 endpoints nft spends about 2 s of CPU parsing 242,000 elements, this encodes
        them in under half of that while the kernel inserts them), then nft -f of the base chains: the one
        step that puts the table in the packet path, atomically, with everything it refers to in place.
        False, with nothing left behind, when any step fails or an element cannot be encoded: the caller
        then loads the whole text with nft, whose refusal (if it refuses too) is the error to report."""
        steps: dict[str, float] = {}
        if any(nftelements.layout(declaration) is None for _, declaration, _ in staged.elements):
            return False
        started = time.perf_counter()
        try:
            self._load(staged.skeleton)
            steps["skeleton"] = time.perf_counter() - started
            started = time.perf_counter()
            with without_cycle_collection():  # 142,000 encoded elements, no cycles among them
                nftelements.load(self.family, self.table, staged.elements, self.netns)
            steps["elements"] = time.perf_counter() - started
            started = time.perf_counter()
            self._load(staged.base)
            steps["base"] = time.perf_counter() - started
        except (ApplyError, ValueError, OSError):
            # (ValueError: nftelements.ElementError among them) the table never reached a base
            # chain: deleting it returns to where we started
            self._nft("delete", "table", self.family, self.table)
            return False
        self.last_load_steps = steps
        return True

    def _try_load(self, script: str) -> bool:
        try:
            self._load(script)
        except ApplyError:
            # e.g. the table was edited behind our back so a flushed chain no longer exists: the
            # transaction changed nothing, and the caller replaces the whole table instead
            return False
        return True

    def table_handle(self) -> str | None:
        """The kernel's handle of our table (new each time the table is created), None when it is absent."""
        try:
            handle = nftlink.table_handle(self.family, self.table, self.netns)
        except OSError:
            return self._table_handle_by_nft()  # no netlink here (permissions): ask nft, slowly
        return None if handle is None else str(handle)

    def _table_handle_by_nft(self) -> str | None:
        result = self._nft("-j", "list", "tables", self.family)
        if result.returncode != 0:
            return None
        try:
            entries = json.loads(result.stdout).get("nftables", [])
        except (ValueError, AttributeError):
            return None
        for entry in entries:
            found = entry.get("table") if isinstance(entry, dict) else None
            if isinstance(found, dict) and found.get("name") == self.table:
                return str(found.get("handle"))
        return None

    def listing(self) -> str:
        result = self._nft("list", "table", self.family, self.table)
        return result.stdout if result.returncode == 0 else ""

    def drifted(self) -> bool:
        """True when our table was removed or replaced since we loaded it (cheap: see the class comment)."""
        return self._applied is not None and self.table_handle() != self._handle

    def _generation(self) -> int | None:
        try:
            return nftlink.generation(self.netns)
        except OSError:
            return None  # no netlink here: every check lists the table

    def _edited(self) -> bool:
        """True when the table's listing differs from the baseline one; the first call after an apply takes
        the baseline. Later calls list nothing while the namespace's ruleset generation is the one seen at
        the last listing: no transaction at all was committed since, by anyone."""
        generation = self._generation()
        if generation is not None and generation == self._seen_generation:
            return False
        current = self.listing()
        if self._baseline is None or current == self._baseline:
            self._baseline = current
            self._seen_generation = generation
            return False
        return True

    def reapply_if_drifted(self) -> bool:
        with self._lock:
            if self._applied is None or not (self.drifted() or self._edited()):
                return False
            ruleset, self._applied = self._applied, None
            return self._apply(ruleset)

    def remove(self) -> None:
        """Delete our table (nothing else); no error when it is already gone."""
        result = self._nft("delete", "table", self.family, self.table)
        if result.returncode != 0 and "No such file" not in result.stderr:
            raise ApplyError(
                f"nft could not delete table {self.family} {self.table}: {_first_lines(result.stderr)}"
            )
        self._applied = None
        self._handle = None
        self._baseline = None
        self._seen_generation = None


def _staged(rendering: RenderedNftables) -> StagedNftables:
    with without_cycle_collection():
        return rendering.staged()


def _difference(
    old: str | RenderedNftables, new: str | RenderedNftables, family: str, table: str
) -> str | None:
    """The incremental script from ``old`` to ``new`` ("" when equal), None when a full load is needed."""
    if isinstance(old, RenderedNftables) and isinstance(new, RenderedNftables):
        return incremental_structured(old, new)
    if isinstance(old, str) and isinstance(new, str) and old == new:
        return ""
    return incremental(
        old if isinstance(old, str) else old.text(),
        new if isinstance(new, str) else new.text(),
        family,
        table,
    )


def write_atomically(path: Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never a part (temp, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


class HAProxyDriver:
    """Runs haproxy in master-worker mode on a config file and reloads it without dropping connections.

    A reload is SIGUSR2 to the master: it starts new workers on the new config and lets the old ones finish
    their connections. Each new config is checked with `haproxy -c` first; a config that fails the check is
    never written over the running one.
    """

    def __init__(self, config_path: Path, binary: str = "haproxy") -> None:
        self.config_path = config_path
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.applied: str | None = None
        self.reloads = 0

    def validate(self, config: str) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".cfg", dir=self.config_path.parent, delete=False) as f:
            f.write(config)
        try:
            result = _run([self.binary, "-c", "-q", "-f", f.name])
        finally:
            os.unlink(f.name)
        if result.returncode != 0:
            raise ApplyError(
                f"haproxy rejected the configuration: {_first_lines(result.stdout + result.stderr)}"
            )

    def apply(self, config: str) -> bool:
        if config == self.applied and self.running():
            return False
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.validate(config)
        write_atomically(self.config_path, config)
        if self.running():
            assert self.process is not None
            self.process.send_signal(signal.SIGUSR2)
            self.reloads += 1
        else:
            self._start()
        self.applied = config
        return True

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _start(self) -> None:
        # haproxy's own messages (health checks going up and down) go to a log file beside the config: a
        # pipe nobody reads would fill and block haproxy
        log_path = self.config_path.with_suffix(".log")
        try:
            with log_path.open("ab") as log_file:
                self.process = subprocess.Popen(
                    [self.binary, "-W", "-db", "-f", str(self.config_path)],
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                )
        except FileNotFoundError:
            raise ApplyError(f"{self.binary} is not installed") from None
        # a config that passes -c can still fail to start (an address not on this host, a port taken)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                tail = log_path.read_text(errors="replace")[-2000:]
                raise ApplyError(f"haproxy failed to start: {_first_lines(tail)} (log: {log_path})")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        # SIGUSR1 to the master: soft stop, workers finish their connections
        self.process.send_signal(signal.SIGUSR1)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
