"""The store keeps unchanged objects identical and the last good version of a broken one."""

from __future__ import annotations

from pathlib import Path

from kubegate.objects.meta import ObjectKey
from kubegate.sources.files import load_paths
from kubegate.store import Store

SERVICE = "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{ports: [{{port: {port}}}]}}\n"


def _write(path: Path, *docs: str) -> None:
    path.write_text("---\n".join(docs))


def test_unchanged_objects_keep_their_identity(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", SERVICE.format(name="a", port=80), SERVICE.format(name="b", port=80))
    store = Store()
    assert store.apply(load_paths([str(tmp_path)])).added
    a_before = store.snapshot.services[("default", "a")]
    _write(tmp_path / "a.yaml", SERVICE.format(name="a", port=80), SERVICE.format(name="b", port=81))
    change = store.apply(load_paths([str(tmp_path)]))
    assert change.updated == [ObjectKey("Service", "default", "b")]
    assert store.snapshot.services[("default", "a")] is a_before
    assert store.snapshot.services[("default", "b")].spec.ports[0].port == 81


def test_reload_without_changes_is_not_a_change(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", SERVICE.format(name="a", port=80))
    store = Store()
    store.apply(load_paths([str(tmp_path)]))
    version = store.version
    assert not store.apply(load_paths([str(tmp_path)])).changed
    assert store.version == version


def test_broken_edit_keeps_last_good_version(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", SERVICE.format(name="a", port=80), SERVICE.format(name="b", port=80))
    store = Store()
    store.apply(load_paths([str(tmp_path)]))
    _write(tmp_path / "a.yaml", SERVICE.format(name="a", port=99999), SERVICE.format(name="b", port=82))
    change = store.apply(load_paths([str(tmp_path)]))
    assert change.kept == [ObjectKey("Service", "default", "a")]
    assert store.snapshot.services[("default", "a")].spec.ports[0].port == 80
    assert store.snapshot.services[("default", "b")].spec.ports[0].port == 82


def test_unparseable_file_keeps_all_its_objects_and_deletion_elsewhere_still_applies(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", SERVICE.format(name="a", port=80))
    _write(tmp_path / "b.yaml", SERVICE.format(name="b", port=80))
    store = Store()
    store.apply(load_paths([str(tmp_path)]))
    (tmp_path / "a.yaml").write_text("spec: [unclosed\n")
    (tmp_path / "b.yaml").unlink()
    change = store.apply(load_paths([str(tmp_path)]))
    assert change.kept == [ObjectKey("Service", "default", "a")]
    assert change.deleted == [ObjectKey("Service", "default", "b")]
    assert set(store.snapshot.services) == {("default", "a")}
