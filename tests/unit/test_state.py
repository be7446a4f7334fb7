"""The allocation state file: round trip, missing and corrupt files, and atomic replacement under failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubegate.state import StateError, load_allocations, save_allocations
from kubegate.translate.context import Allocations

ALLOCATIONS = Allocations(
    cluster_ips={"default/web": "10.96.0.2", "kube-system/dns": "10.96.0.10"},
    node_ports={"default/web:80/TCP": 30080},
    load_balancer_ips={"default/web": "127.0.100.1"},
)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_allocations(path, ALLOCATIONS)
    assert load_allocations(path) == ALLOCATIONS
    # no temporary files are left behind
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_missing_file_is_an_empty_state(tmp_path: Path) -> None:
    assert load_allocations(tmp_path / "absent.json") == Allocations()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"node_ports": {"default/a:80/TCP": "thirty"}}', b"[]", b"\xff\xfe"],
)
def test_corrupt_file_raises_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with pytest.raises(StateError, match=r"state\.json is corrupt"):
        load_allocations(path)
    assert path.read_bytes() == content  # never discarded


def test_unreadable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot read state file"):
        load_allocations(tmp_path)  # a directory


def test_replacing_overwrites_the_old_content(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_allocations(path, ALLOCATIONS)
    save_allocations(path, Allocations(cluster_ips={"default/other": "10.96.0.3"}))
    assert load_allocations(path) == Allocations(cluster_ips={"default/other": "10.96.0.3"})


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_a_failed_write_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "state.json"
    save_allocations(path, ALLOCATIONS)
    before = path.read_bytes()

    def full_disk(*args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(f"kubegate.state.os.{failing}", full_disk)
    with pytest.raises(StateError, match=r"cannot write state file .*state.json: No space left on device"):
        save_allocations(path, Allocations())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_short_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def one_byte_at_a_time(descriptor: int, data: bytes | memoryview) -> int:
        return real_write(descriptor, bytes(data[:1]))

    monkeypatch.setattr("kubegate.state.os.write", one_byte_at_a_time)
    path = tmp_path / "state.json"
    save_allocations(path, ALLOCATIONS)
    monkeypatch.undo()
    assert load_allocations(path) == ALLOCATIONS


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_raises_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_allocations(path, ALLOCATIONS)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(StateError, match="cannot write state file"):
            save_allocations(path, Allocations())
    finally:
        tmp_path.chmod(0o755)
    assert load_allocations(path) == ALLOCATIONS


def test_a_failed_rename_removes_the_temporary_file(tmp_path: Path) -> None:
    # a real failure, without monkeypatching: a non-empty directory where the file should be
    path = tmp_path / "state.json"
    path.mkdir()
    (path / "keep").write_text("x")
    with pytest.raises(StateError, match=r"cannot write state file .*state\.json"):
        save_allocations(path, ALLOCATIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert (path / "keep").read_text() == "x"


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(StateError, match=r"cannot write state file .*nowhere"):
        save_allocations(tmp_path / "nowhere" / "state.json", ALLOCATIONS)


def test_the_file_is_sorted_json(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_allocations(path, ALLOCATIONS)
    text = path.read_text()
    assert text.startswith('{"cluster_ips":{"default/web":"10.96.0.2","kube-system/dns":"10.96.0.10"}')
    assert text.endswith("}\n")
