"""Strategic merge patch, the PATCH type kubectl apply/patch/label/annotate send by default.

Like a JSON merge patch, except for lists: a list whose Go field declares ``patchStrategy:"merge"`` is
merged element by element on its ``patchMergeKey`` (Service ``spec.ports`` by ``port``, Pod containers by
``name``, ``metadata.finalizers`` as a set of strings, ...), and the directives kubectl emits are
interpreted: ``$patch: replace|delete|merge``, ``$setElementOrder/<list>``, ``$deleteFromPrimitiveList/
<list>`` and ``$retainKeys``. Lists without a declared strategy are replaced whole, as in kube. The merge
keys are a table of the fields of the kinds served here (from the Kubernetes API types), not a schema.
"""

from __future__ import annotations

import copy
from typing import Any

PRIMITIVE = ""  # a list of scalars merged as a set (e.g. finalizers)

_CONTAINER_LISTS = {
    "ports": "containerPort",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
_EVERY_KIND = {"metadata.ownerReferences": "uid", "metadata.finalizers": PRIMITIVE}
_MERGE_KEYS: dict[str, dict[str, str]] = {
    "Service": {"spec.ports": "port"},
    "Pod": {
        "spec.volumes": "name",
        "spec.imagePullSecrets": "name",
        "spec.hostAliases": "ip",
        "status.conditions": "type",
        **{f"spec.{group}": "name" for group in ("containers", "initContainers", "ephemeralContainers")},
        **{
            f"spec.{group}.[].{field}": key
            for group in ("containers", "initContainers", "ephemeralContainers")
            for field, key in _CONTAINER_LISTS.items()
        },
    },
    "Node": {"status.conditions": "type", "status.addresses": "type", "spec.podCIDRs": PRIMITIVE},
}


def _merge_key(kind: str, path: tuple[str, ...]) -> str | None:
    dotted = ".".join(path)
    if dotted in _EVERY_KIND:
        return _EVERY_KIND[dotted]
    return _MERGE_KEYS.get(kind, {}).get(dotted)


def _is_directive(key: str) -> bool:
    return key in ("$patch", "$retainKeys") or key.startswith(
        ("$setElementOrder/", "$deleteFromPrimitiveList/")
    )


def _clean(value: Any) -> Any:
    """A patch value stored as is: without directive keys and without entries marked for deletion."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not _is_directive(k) and v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value if not (isinstance(v, dict) and v.get("$patch") == "delete")]
    return copy.deepcopy(value)


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    """``$setElementOrder``: the listed elements in the given order, then any others in their order."""

    def identity(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [identity(entry) for entry in order]
    placed = [
        next(item for item in items if identity(item) == want)
        for want in wanted
        if want in map(identity, items)
    ]
    rest = [item for item in items if identity(item) not in wanted]
    return placed + rest


def _merge_list(kind: str, path: tuple[str, ...], original: Any, patch: list[Any]) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        marker = {"$patch": "replace"}
        return [_clean(item) for item in patch if item != marker]
    key = _merge_key(kind, path)
    current = list(original) if isinstance(original, list) else []
    if key is None:
        return [_clean(item) for item in patch]  # no patch strategy: the list is replaced
    if key == PRIMITIVE:
        return current + [copy.deepcopy(value) for value in patch if value not in current]
    item_path = (*path, "[]")
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            current.append(_clean(item))
            continue
        at = next(
            (i for i, old in enumerate(current) if isinstance(old, dict) and old.get(key) == item[key]), None
        )
        if item.get("$patch") == "delete":
            if at is not None:
                del current[at]
        elif at is None:
            current.append(merge(kind, item_path, {}, item))
        else:
            current[at] = merge(kind, item_path, current[at], item)
    return current


def merge(kind: str, path: tuple[str, ...], original: Any, patch: dict[str, Any]) -> Any:
    """Apply a strategic merge patch (a map) to ``original`` at ``path`` of an object of ``kind``."""
    directive = patch.get("$patch")
    if directive == "replace":
        return _clean({k: v for k, v in patch.items() if k != "$patch"})
    result: dict[str, Any] = dict(original) if isinstance(original, dict) else {}
    for key, values in patch.items():
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(values, list):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field) or [] if v not in values]
    for key, value in patch.items():
        if _is_directive(key):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = merge(kind, (*path, key), result.get(key), value)
        elif isinstance(value, list):
            result[key] = _merge_list(kind, (*path, key), result.get(key), value)
        else:
            result[key] = copy.deepcopy(value)
    for key, order in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(order, list):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = _reorder(result[field], order, _merge_key(kind, (*path, field)) or None)
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def strategic_merge_patch(kind: str, original: dict[str, Any], patch: dict[str, Any]) -> Any:
    return merge(kind, (), original, patch)
