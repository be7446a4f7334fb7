"""Apply rendered configuration to the tools that carry it: nft (kernel mode) and haproxy.

The renderers are pure; this is the one place that runs commands. Every change is validated with the tool
itself before it is used (`nft -c`, `haproxy -c`), applied as one transaction (a whole `nft -f` ruleset is
atomic: it replaces the table or changes nothing), and on failure the last good configuration stays in
force and the error names what the tool said.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from kubegate.planes.render.nftdiff import incremental

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

    The first apply loads the whole ruleset; later ones load only the difference to the last applied
    ruleset (``nftdiff.incremental``: one atomic ``nft -f`` of flushed and re-added chains and set
    elements) and fall back to a validated full replace when the diff declines or the kernel refuses it.

    Drift costs nothing on the apply path. ``drifted()`` compares the table's kernel handle with the one
    recorded after the last apply (``nft -j list tables``, milliseconds at any size): it catches the table
    being deleted or replaced, not rules edited inside it. ``reapply_if_drifted()`` (the periodic check)
    also compares a full ``nft list table`` listing with a baseline listing taken at the first periodic
    check after an apply; that listing takes seconds at 10,000 Services, so it is never done in apply().
    An edit made between an apply and the next periodic check becomes part of that baseline.
    """

    def __init__(self, table: str = "kubegate", family: str = "inet", netns: str | None = None) -> None:
        self.table = table
        self.family = family
        # run inside a network namespace (tests, or an agent managing a namespace it does not live in)
        self._prefix = ["ip", "netns", "exec", netns] if netns else []
        self.applied: str | None = None
        self._handle: str | None = None
        self._baseline: str | None = None
        self.applies = 0
        # how many applies loaded only the difference (the rest replaced the whole table)
        self.incremental_applies = 0

    def _nft(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return _run([*self._prefix, "nft", *args], stdin)

    def validate(self, ruleset: str) -> None:
        result = self._nft("-c", "-f", "-", stdin=ruleset)
        if result.returncode != 0:
            raise ApplyError(f"nft rejected the ruleset: {_first_lines(result.stderr)}")

    def _load(self, script: str) -> None:
        result = self._nft("-f", "-", stdin=script)
        if result.returncode != 0:
            raise ApplyError(f"nft could not load the ruleset: {_first_lines(result.stderr)}")

    def apply(self, ruleset: str) -> bool:
        """Validate, then load in one transaction. Returns False when it was already in force."""
        intact = self.applied is not None and not self.drifted()
        if ruleset == self.applied and intact:
            return False
        if intact and self.applied is not None and self._apply_incrementally(self.applied, ruleset):
            self.incremental_applies += 1
        else:
            self.validate(ruleset)
            self._load(ruleset)
        self.applied = ruleset
        self._handle = self.table_handle()
        self._baseline = None
        self.applies += 1
        return True

    def _apply_incrementally(self, old: str, new: str) -> bool:
        """True when the difference was loaded; False (nothing changed) when a full replace is needed."""
        script = incremental(old, new, self.family, self.table)
        if script is None:
            return False
        if not script:
            return True  # nothing the kernel would see differs (comments, blank lines)
        try:
            self.validate(script)
            self._load(script)
        except ApplyError:
            # e.g. the table was edited behind our back so a flushed chain no longer exists: the
            # transaction changed nothing, and the full replace below is validated on its own
            return False
        return True

    def table_handle(self) -> str | None:
        """The kernel's handle of our table (new each time the table is created), None when it is absent."""
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
        return self.applied is not None and self.table_handle() != self._handle

    def _edited(self) -> bool:
        """True when the table's listing differs from the baseline one; the first call takes the baseline."""
        current = self.listing()
        if self._baseline is None:
            self._baseline = current
            return False
        return current != self._baseline

    def reapply_if_drifted(self) -> bool:
        if self.applied is None or not (self.drifted() or self._edited()):
            return False
        ruleset, self.applied = self.applied, None
        return self.apply(ruleset)

    def remove(self) -> None:
        """Delete our table (nothing else); no error when it is already gone."""
        result = self._nft("delete", "table", self.family, self.table)
        if result.returncode != 0 and "No such file" not in result.stderr:
            raise ApplyError(
                f"nft could not delete table {self.family} {self.table}: {_first_lines(result.stderr)}"
            )
        self.applied = None
        self._handle = None
        self._baseline = None


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
