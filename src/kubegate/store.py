"""The keyed cache of one source's objects.

A reload hands the store everything the source now holds; the store keeps the previous Python object for
every unchanged key (so the translator's per-object memo stays valid), decides whether anything changed at
all, and keeps the last good version of an object whose new version is broken: one bad edit never takes an
object out of service.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kubegate.objects.kinds import KubeObject
from kubegate.objects.meta import ObjectKey, Origin
from kubegate.objects.snapshot import Snapshot
from kubegate.sources.files import Loaded, LoadResult, Problem


def object_key(obj: KubeObject) -> ObjectKey:
    namespace = "" if obj.kind == "IngressClass" else obj.metadata.namespace
    return ObjectKey(obj.kind, namespace, obj.metadata.name)


@dataclass(slots=True)
class Change:
    """What one reload did to the store."""

    added: list[ObjectKey] = field(default_factory=list)
    updated: list[ObjectKey] = field(default_factory=list)
    deleted: list[ObjectKey] = field(default_factory=list)
    # objects whose new version is broken (or whose file is): the last good version is kept
    kept: list[ObjectKey] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.deleted)


class Store:
    def __init__(self) -> None:
        self._objects: dict[ObjectKey, Loaded] = {}
        self._snapshot = Snapshot()
        self.version = 0
        self.changes_seen = 0

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def origin(self, key: ObjectKey) -> Origin | None:
        loaded = self._objects.get(key)
        return None if loaded is None else loaded.origin

    def apply(self, result: LoadResult) -> Change:
        """Replace the store's content with a fresh full load of the source."""
        broken_objects = {p.object for p in result.problems if p.severity == "error" and p.object is not None}
        broken_sources = _unreadable_sources(result.problems)
        fresh: dict[ObjectKey, Loaded] = {}
        for loaded in result.objects:
            fresh.setdefault(object_key(loaded.obj), loaded)
        change = Change()
        merged: dict[ObjectKey, Loaded] = {}
        for key, loaded in fresh.items():
            old = self._objects.get(key)
            if old is None:
                change.added.append(key)
                merged[key] = loaded
            elif old.obj == loaded.obj:
                # same content: keep the old object (identity matters to the translator's memo), new origin
                merged[key] = Loaded(old.obj, loaded.origin) if old.origin != loaded.origin else old
            else:
                change.updated.append(key)
                merged[key] = loaded
        for key, old in self._objects.items():
            if key in merged:
                continue
            if key in broken_objects or old.origin.source in broken_sources:
                change.kept.append(key)
                merged[key] = old
            else:
                change.deleted.append(key)
        self._objects = merged
        if change.changed:
            self.version += 1
            self.changes_seen += len(change.added) + len(change.updated) + len(change.deleted)
            self._snapshot = Snapshot.of(loaded.obj for loaded in _sorted(merged.values()))
        return change


def _unreadable_sources(problems: Iterable[Problem]) -> set[str]:
    """Files that failed as a whole (unreadable, YAML syntax error): nothing from them can be trusted as
    deleted, so their previous objects stay."""
    return {p.origin.source for p in problems if p.severity == "error" and p.object is None}


def _sorted(loaded: Iterable[Loaded]) -> list[Loaded]:
    return sorted(loaded, key=lambda item: object_key(item.obj))
