"""The fake API server's state: objects, the global resourceVersion, change history and open watches.

Everything here is independent of HTTP so that scenario tests can drive it directly and the HTTP layer
stays a thin translation. One lock guards all state; every write bumps the single integer resourceVersion
(as etcd's revision does), appends the change to the history and hands it to each watch's queue while
still holding the lock, so each watch sees changes in resourceVersion order with no gap between its replay
and its live events. Queues are unbounded: a slow watcher never blocks a writer.

Stored objects are never mutated after they are stored (every write builds a new dict), so lists, watch
events and history can share them; callers outside get deep copies.
"""

from __future__ import annotations

import bisect
import copy
import datetime
import queue
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.fakes import defaults, errors
from tests.fakes.errors import ApiError
from tests.fakes.resources import ResourceType, find_by_kind
from tests.fakes.selectors import FieldRequirement, Requirement, fields_match, labels_match
from tests.fakes.validation import name_problems, spec_problems

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds
Obj = dict[str, Any]

# Above this many remembered changes the oldest half is forgotten, as etcd compaction would; a watch
# resuming from before that point gets 410 Expired.
HISTORY_LIMIT = 200_000
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # kube's generateName alphabet (no vowels, no 0/1/3)
# Kinds whose kube registry strategy keeps metadata.generation (1 on create, +1 when the spec changes);
# the others (Service, ConfigMap, Lease, ...) have none.
GENERATION_KINDS = frozenset({"Ingress", "IngressClass", "EndpointSlice", "Pod"})
# Kinds whose kube registry strategy has AllowCreateOnUpdate() true: PUT creates them when missing.
CREATE_ON_UPDATE = frozenset({"Service", "Endpoints", "Event", "Lease"})
_PRESERVED_METADATA = ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Change:
    """One write as history keeps it: ``old`` is None for ADDED; ``new`` is the last state for DELETED."""

    resource_version: int
    type: str
    resource: ResourceType
    key: Key
    old: Obj | None
    new: Obj


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    object: Obj
    resource_version: int


@dataclass(frozen=True, slots=True)
class EndStream:
    """Tell a watch to finish: cleanly (final chunk) or by cutting the connection."""

    abrupt: bool = False


@dataclass(frozen=True, slots=True)
class ExpireStream:
    """Tell a watch to send an ERROR event with a 410 Expired Status, then finish."""


WatchItem = WatchEvent | EndStream | ExpireStream


@dataclass(eq=False)
class Watch:
    resource: ResourceType
    namespace: str | None  # None: all namespaces
    labels: tuple[Requirement, ...]
    fields: tuple[FieldRequirement, ...]
    queue: queue.SimpleQueue[WatchItem] = field(default_factory=queue.SimpleQueue)

    def selects(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and (obj.get("metadata") or {}).get("namespace", "") != self.namespace:
            return False
        return labels_match(self.labels, obj) and fields_match(self.fields, obj)

    def event_for(self, change: Change) -> WatchEvent | None:
        """The event this watch sees for a change, if any.

        As kube's watch cache does, an object that starts matching the selector arrives as ADDED and one
        that stops matching as DELETED, so a filtered watch is always a consistent view of its subset.
        """
        if change.resource.storage_key != self.resource.storage_key:
            return None
        if change.type == "DELETED":
            was, now = self.selects(change.new), False
        else:
            was, now = self.selects(change.old), self.selects(change.new)
        if was and now:
            kind = "MODIFIED"
        elif now:
            kind = "ADDED"
        elif was:
            kind = "DELETED"
        else:
            return None
        return WatchEvent(kind, change.new, change.resource_version)


def _content(obj: Obj) -> Obj:
    """What generation tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class Cluster:
    """All state of the fake; ``strict`` turns on the checks kube makes that the fake skips by default:
    objects only in existing Namespaces (404 otherwise) and Ingress hosts validated as DNS names."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.lock = threading.RLock()
        self.resource_version = 0
        # Watches and exact lists from before this resourceVersion get 410: history before it is gone.
        self.oldest_resource_version = 0
        self._objects: dict[tuple[str, str], dict[Key, Obj]] = {}
        self._history: list[Change] = []
        self._history_versions: list[int] = []
        self._watches: set[Watch] = set()
        self.allocator = defaults.Allocator()

    # ----------------------------------------------------------------------------------------- reads

    def _bucket(self, resource: ResourceType) -> dict[Key, Obj]:
        return self._objects.setdefault(resource.storage_key, {})

    def get(self, resource: ResourceType, namespace: str, name: str) -> Obj:
        with self.lock:
            obj = self._bucket(resource).get((namespace, name))
            if obj is None:
                raise errors.not_found(resource.group, resource.plural, name)
            return obj

    def list_objects(
        self,
        resource: ResourceType,
        namespace: str | None,
        labels: tuple[Requirement, ...] = (),
        fields: tuple[FieldRequirement, ...] = (),
        at: int | None = None,
    ) -> tuple[int, list[Obj]]:
        """Objects in key order (as etcd returns them) and the list's resourceVersion.

        ``at`` asks for the state exactly at that resourceVersion (resourceVersionMatch=Exact): rebuilt by
        rolling the history back, or 410 if that part of history was compacted.
        """
        probe = Watch(resource, namespace, labels, fields)
        with self.lock:
            bucket = dict(self._bucket(resource))
            version = self.resource_version
            if at is not None and at != version:
                if at < self.oldest_resource_version:
                    raise ApiError(410, "Expired", "The resourceVersion for the provided list is too old.")
                if at > version:
                    raise too_large(at, version)
                start = bisect.bisect_right(self._history_versions, at)
                for change in reversed(self._history[start:]):
                    if change.resource.storage_key != resource.storage_key:
                        continue
                    if change.old is None:
                        bucket.pop(change.key, None)
                    else:
                        bucket[change.key] = change.old
                version = at
        items = [bucket[key] for key in sorted(bucket) if probe.selects(bucket[key])]
        return version, items

    # ---------------------------------------------------------------------------------------- writes

    def _record(self, change_type: str, resource: ResourceType, key: Key, old: Obj | None, new: Obj) -> None:
        change = Change(self.resource_version, change_type, resource, key, old, new)
        self._history.append(change)
        self._history_versions.append(change.resource_version)
        if len(self._history) > HISTORY_LIMIT:
            keep = HISTORY_LIMIT // 2
            self.oldest_resource_version = self._history[-keep].resource_version - 1
            del self._history[:-keep]
            del self._history_versions[:-keep]
        for watch in self._watches:
            event = watch.event_for(change)
            if event is not None:
                watch.queue.put(event)

    def _next_version(self) -> str:
        self.resource_version += 1
        return str(self.resource_version)

    def _check_type(self, resource: ResourceType, obj: Obj) -> None:
        api_version = obj.get("apiVersion", resource.api_version)
        kind = obj.get("kind", resource.kind)
        if api_version != resource.api_version or kind != resource.kind:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({resource.api_version})"
                if api_version != resource.api_version
                else f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
            )

    def _check_namespace(self, resource: ResourceType, namespace: str, obj: Obj) -> None:
        given = (obj.get("metadata") or {}).get("namespace")
        if resource.namespaced and given and given != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )

    def _validate(self, resource: ResourceType, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        problems = name_problems(resource.kind, name) + spec_problems(resource.kind, obj, strict=self.strict)
        if problems:
            raise errors.invalid(resource.kind, resource.group, name, problems)

    def create(self, resource: ResourceType, namespace: str, body: Obj) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        self._check_type(resource, body)
        self._check_namespace(resource, namespace, body)
        metadata = body.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        metadata = copy.deepcopy(metadata)  # the caller keeps its dicts; the stored object owns its own
        with self.lock:
            if not metadata.get("name"):
                prefix = metadata.get("generateName")
                if not prefix or not isinstance(prefix, str):
                    raise errors.invalid(
                        resource.kind,
                        resource.group,
                        "",
                        [("metadata.name", "Required value: name or generateName is required")],
                    )
                bucket = self._bucket(resource)
                while True:
                    candidate = prefix + "".join(random.choices(_GENERATE_ALPHABET, k=5))
                    if (namespace, candidate) not in bucket:
                        break
                metadata["name"] = candidate
            name = metadata["name"]
            if not isinstance(name, str):
                raise errors.bad_request("metadata.name must be a string")
            key = (namespace if resource.namespaced else "", name)
            if (
                self.strict
                and resource.namespaced
                and ("", namespace) not in self._objects.get(("", "namespaces"), {})
            ):
                raise errors.not_found("", "namespaces", namespace)
            if key in self._bucket(resource):
                raise errors.already_exists(resource.group, resource.plural, name)
            for dropped in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
                metadata.pop(dropped, None)
            if resource.namespaced:
                metadata["namespace"] = namespace
            else:
                metadata.pop("namespace", None)
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = now_rfc3339()
            metadata.pop("generation", None)
            if resource.kind in GENERATION_KINDS:
                metadata["generation"] = 1
            obj: Obj = {**copy.deepcopy(body), "apiVersion": resource.api_version, "kind": resource.kind}
            obj["metadata"] = metadata
            if resource.has_status:
                obj.pop("status", None)
                if resource.kind == "Pod":
                    obj["status"] = {"phase": "Pending", "qosClass": defaults.pod_qos_class(obj)}
                elif resource.kind == "Namespace":
                    obj["status"] = {"phase": "Active"}
                elif resource.kind == "Node":
                    obj["status"] = copy.deepcopy(
                        body.get("status") or {}
                    )  # kubelets create Nodes with status
                else:
                    obj["status"] = {"loadBalancer": {}}  # Service and Ingress, as kube stores them
            obj = defaults.plain_defaults(resource.kind, obj)
            self._validate(resource, obj)
            if resource.kind == "Service":
                obj = defaults.default_service(obj, None, self.allocator)
            obj["metadata"]["resourceVersion"] = self._next_version()
            self._bucket(resource)[key] = obj
            self._record("ADDED", resource, key, None, obj)
            return obj

    def update(
        self, resource: ResourceType, namespace: str, name: str, body: Obj, *, status: bool
    ) -> tuple[bool, Obj]:
        """PUT: replace the object (or only its status); a stale metadata.resourceVersion is a 409.

        Returns (created, object): for the kinds kube allows it, a PUT without a resourceVersion creates a
        missing object (201), as ``AllowCreateOnUpdate`` does in their registry strategies.
        """
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        self._check_type(resource, body)
        self._check_namespace(resource, namespace, body)
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        assert isinstance(metadata, dict)
        given_name = metadata.get("name")
        if given_name != name:
            raise errors.bad_request(
                f"the name of the object ({given_name}) does not match the name on the URL ({name})"
            )
        with self.lock:
            key = (namespace if resource.namespaced else "", name)
            old = self._bucket(resource).get(key)
            wanted = metadata.get("resourceVersion")
            if old is None:
                if resource.kind in CREATE_ON_UPDATE and not status and not wanted:
                    return True, self.create(resource, namespace, body)
                raise errors.not_found(resource.group, resource.plural, name)
            if wanted:
                if not str(wanted).isdigit():
                    raise errors.bad_request(f"invalid resourceVersion {wanted!r}: must be an integer")
                if str(wanted) != old["metadata"]["resourceVersion"]:
                    raise errors.conflict(resource.group, resource.plural, name)
            return False, self._store_update(resource, key, old, body, status=status)

    def _store_update(self, resource: ResourceType, key: Key, old: Obj, body: Obj, *, status: bool) -> Obj:
        if status:
            # The status subresource changes .status only; metadata and spec edits are ignored.
            new: Obj = {**old, "status": copy.deepcopy(body.get("status", {}))}
        else:
            new = {**copy.deepcopy(body), "apiVersion": resource.api_version, "kind": resource.kind}
            metadata = dict(new.get("metadata") or {})
            for preserved in _PRESERVED_METADATA:
                if preserved in old["metadata"]:
                    metadata[preserved] = old["metadata"][preserved]
                else:
                    metadata.pop(preserved, None)
            new["metadata"] = metadata
            if resource.has_status:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            new = defaults.plain_defaults(resource.kind, new)
            self._validate(resource, new)
            if resource.kind == "Service":
                new = defaults.default_service(new, old, self.allocator)
        new["metadata"] = {**new["metadata"], "resourceVersion": old["metadata"]["resourceVersion"]}
        if new == old:
            return old  # a no-op write changes nothing, not even the resourceVersion (as in kube)
        if resource.kind in GENERATION_KINDS and _content(new) != _content(old):
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if old["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self._remove(resource, key, new)
        new["metadata"]["resourceVersion"] = self._next_version()
        self._bucket(resource)[key] = new
        self._record("MODIFIED", resource, key, old, new)
        if resource.kind == "Service":
            self.allocator.release(old, kept=new)  # e.g. nodePorts of a Service no longer NodePort
        return new

    def modify(self, resource: ResourceType, namespace: str, name: str, edit: Any, *, status: bool) -> Obj:
        """PATCH: ``edit(current) -> patched``; a resourceVersion in the patched object is a precondition."""
        with self.lock:
            key = (namespace if resource.namespaced else "", name)
            old = self._bucket(resource).get(key)
            if old is None:
                raise errors.not_found(resource.group, resource.plural, name)
            patched = edit(old)
            if not isinstance(patched, dict) or not isinstance(patched.get("metadata", {}), dict):
                raise errors.bad_request("the patched object must be a JSON object with object metadata")
            self._check_type(resource, patched)
            metadata = patched.get("metadata") or {}
            if metadata.get("name", name) != name:
                raise errors.bad_request(
                    f"the name of the object ({metadata.get('name')}) does not match the name on the URL "
                    f"({name})"
                )
            wanted = metadata.get("resourceVersion")
            if wanted and str(wanted) != old["metadata"]["resourceVersion"]:
                raise errors.conflict(resource.group, resource.plural, name)
            patched = {**patched, "metadata": {**metadata, "name": name}}
            return self._store_update(resource, key, old, patched, status=status)

    def delete(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        *,
        precondition_version: str | None = None,
        precondition_uid: str | None = None,
    ) -> tuple[bool, Obj]:
        """Delete now, or mark for deletion when finalizers remain; returns (deleted now, object)."""
        with self.lock:
            key = (namespace if resource.namespaced else "", name)
            old = self._bucket(resource).get(key)
            if old is None:
                raise errors.not_found(resource.group, resource.plural, name)
            if precondition_uid and precondition_uid != old["metadata"]["uid"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: UID in precondition: {precondition_uid}, UID in object meta: "
                    f"{old['metadata']['uid']}",
                )
            if precondition_version and precondition_version != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Precondition failed: ResourceVersion in precondition: {precondition_version}, "
                    f"ResourceVersion in object meta: {old['metadata']['resourceVersion']}",
                )
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return False, old
                metadata = {
                    **old["metadata"],
                    "deletionTimestamp": now_rfc3339(),
                    "deletionGracePeriodSeconds": 0,
                }
                new = {**old, "metadata": metadata}
                new["metadata"]["resourceVersion"] = self._next_version()
                self._bucket(resource)[key] = new
                self._record("MODIFIED", resource, key, old, new)
                return False, new
            return True, self._remove(resource, key, old)

    def _remove(self, resource: ResourceType, key: Key, last: Obj) -> Obj:
        if resource.kind == "Namespace":
            self._empty_namespace(key[1])  # its contents go first, as the namespace controller does
        bucket = self._bucket(resource)
        old = bucket.pop(key)
        gone = {**last, "metadata": {**last["metadata"], "resourceVersion": self._next_version()}}
        self._record("DELETED", resource, key, old, gone)
        if resource.kind == "Service":
            self.allocator.release(old)
        return gone

    def _empty_namespace(self, namespace: str) -> None:
        """What the namespace controller does for a deleted Namespace: delete everything in it."""
        for bucket in list(self._objects.values()):
            for key in [k for k in bucket if k[0] == namespace]:
                obj = bucket[key]
                resource = _resource_of(obj)
                if resource is not None:
                    self._remove(resource, key, obj)

    # --------------------------------------------------------------------------------------- history

    def compact(self) -> None:
        with self.lock:
            self.oldest_resource_version = self.resource_version
            self._history.clear()
            self._history_versions.clear()

    # --------------------------------------------------------------------------------------- watches

    def open_watch(self, watch: Watch, since: int | None) -> Iterator[WatchEvent]:
        """Register ``watch`` and return the events it must see first, atomically.

        ``since`` None: synthetic ADDED events for every current object (resourceVersion unset or "0").
        Otherwise the recorded changes after ``since``; older than the kept history: 410 Expired.
        """
        with self.lock:
            if since is None:
                replay = [
                    WatchEvent("ADDED", obj, self.resource_version)
                    for key, obj in sorted(self._bucket(watch.resource).items())
                    if watch.selects(obj)
                ]
            else:
                if since < self.oldest_resource_version:
                    raise errors.expired(since, self.oldest_resource_version + 1)
                if since > self.resource_version:
                    raise too_large(since, self.resource_version)
                start = bisect.bisect_right(self._history_versions, since)
                replay = [e for e in (watch.event_for(c) for c in self._history[start:]) if e is not None]
            self._watches.add(watch)
        return iter(replay)

    def close_watch(self, watch: Watch) -> None:
        with self.lock:
            self._watches.discard(watch)

    def watches(self) -> list[Watch]:
        with self.lock:
            return list(self._watches)

    def bookmark_version(self, watch: Watch) -> int | None:
        """The resourceVersion a bookmark may carry now, or None while events are still queued.

        Checked under the lock that writers hold while queueing, so an empty queue here means the watch has
        been sent every event up to the current resourceVersion.
        """
        with self.lock:
            return self.resource_version if watch.queue.empty() else None


def too_large(requested: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Too large resource version: {requested}, current: {current}",
        {
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        },
    )


def _resource_of(obj: Obj) -> ResourceType | None:
    return find_by_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
