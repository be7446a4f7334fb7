"""LoadBalancer address pools from the command line or from YAML files, validated.

Command line (``--pool``), one pool per flag, either just addresses::

    192.0.2.0/28
    192.0.2.0/28|198.51.100.10-198.51.100.20

(named ``pool-N``, N counting the flags from 1), or comma-separated ``key=value`` settings::

    name=public,addresses=192.0.2.0/28|198.51.100.10-198.51.100.20,namespaces=a|b,classes=x,autoAssign=false

Keys: ``name``, ``addresses`` (required), ``namespaces``, ``classes`` (loadBalancerClasses), ``autoAssign``
and ``avoidBuggyIPs`` (true/false). List values are separated by ``|``, because ``,`` separates the
settings. Addresses are CIDRs, inclusive ranges ``FIRST-LAST`` or single addresses, IPv4 or IPv6.

YAML file (``--pools``), any number of documents of either kind::

    apiVersion: kubegate.io/v1alpha1
    kind: AddressPool
    metadata: {name: public}
    spec:
      addresses: [192.0.2.0/28, 198.51.100.10-198.51.100.20]
      autoAssign: true              # default true
      avoidBuggyIPs: false          # default false
      namespaces: [a, b]            # default: every namespace
      loadBalancerClasses: [x]      # default: every class kubegate handles

    apiVersion: metallb.io/v1beta1  # MetalLB's own files work unchanged
    kind: IPAddressPool
    metadata: {name: public, namespace: metallb-system}
    spec:
      addresses: [...]
      autoAssign: true
      avoidBuggyIPs: false
      serviceAllocation: {priority: 10, namespaces: [a, b]}

MetalLB pools with a ``serviceAllocation.priority`` are tried first, lowest number first, as MetalLB
does; the others follow in file order. MetalLB's namespace and service label selectors are rejected
rather than ignored, since ignoring them would widen the pool. Other MetalLB kinds (L2Advertisement,
BGPPeer, ...) are skipped, so a whole MetalLB configuration file can be given.

Every error names the file, the pool and the field. Pools must not overlap, within or across sources.
Addresses are kept as ranges: a pool of an IPv6 /64 costs no more than a /30.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from kubegate.translate.allocation import AddressRange, format_value, parse_address_range
from kubegate.translate.context import Pool

KUBEGATE_API_VERSION = "kubegate.io/v1alpha1"
METALLB_API_VERSION = "metallb.io/v1beta1"
# a typo in our own kind is an error; MetalLB's kind may grow fields we do not need
_ADDRESS_POOL_FIELDS = ("addresses", "autoAssign", "avoidBuggyIPs", "namespaces", "loadBalancerClasses")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class PoolError(Exception):
    """Invalid pool configuration; the message names where (file, pool, field) and what is wrong."""


# --------------------------------------------------------------------------------------------------
# Command line


def parse_pool(text: str, index: int = 1) -> Pool:
    """Parse one ``--pool`` value; ``index`` numbers unnamed pools ("pool-1", "pool-2", ...)."""
    where = f"--pool {text!r}"
    text = text.strip()
    if not text:
        raise PoolError(f"{where}: empty")
    if "=" not in text:
        pool = Pool(name=f"pool-{index}", addresses=_split_list(text))
        _check_addresses(pool, where)
        return pool
    settings: dict[str, str] = {}
    for item in text.split(","):
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals:
            raise PoolError(f"{where}: {item.strip()!r} is not KEY=VALUE")
        if key in settings:
            raise PoolError(f"{where}: {key} given twice")
        settings[key] = value.strip()
    known = ("name", "addresses", "namespaces", "classes", "autoAssign", "avoidBuggyIPs")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise PoolError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    if not settings.get("addresses"):
        raise PoolError(f"{where}: addresses is required")
    name = settings.get("name", f"pool-{index}")
    if not name:
        raise PoolError(f"{where}: name is empty")
    pool = Pool(
        name=name,
        addresses=_split_list(settings["addresses"]),
        namespaces=_split_list(settings.get("namespaces", "")),
        service_classes=_split_list(settings.get("classes", "")),
        auto_assign=_flag_bool(settings.get("autoAssign", "true"), f"{where}: autoAssign"),
        avoid_buggy_ips=_flag_bool(settings.get("avoidBuggyIPs", "false"), f"{where}: avoidBuggyIPs"),
    )
    _check_addresses(pool, f"{where}: pool {name}")
    return pool


def parse_pools(texts: Iterable[str]) -> tuple[Pool, ...]:
    """Parse several ``--pool`` values, numbering the unnamed ones, and validate them together."""
    pools = tuple(parse_pool(text, index) for index, text in enumerate(texts, start=1))
    validate_pools(pools)
    return pools


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split("|") if part.strip())


def _flag_bool(text: str, where: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise PoolError(f"{where}: expected true or false, got {text!r}")


# --------------------------------------------------------------------------------------------------
# YAML files


def load_pools(path: Path) -> tuple[Pool, ...]:
    """Read every AddressPool / IPAddressPool document of ``path``, in priority then file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PoolError(f"{path}: cannot read: {error}") from None
    try:
        documents = list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    except yaml.YAMLError as error:
        raise PoolError(f"{path}: not valid YAML: {error}") from None
    ranked: list[tuple[tuple[bool, int, int], Pool]] = []
    for number, document in enumerate(documents, start=1):
        if document is None:
            continue
        where = f"{path} document {number}"
        loaded = _pool_of_document(document, where)
        if loaded is not None:
            pool, priority = loaded
            ranked.append(((priority is None, priority or 0, number), pool))
    ranked.sort(key=lambda item: item[0])
    pools = tuple(pool for _, pool in ranked)
    validate_pools(pools, source=str(path))
    return pools


def _pool_of_document(document: object, where: str) -> tuple[Pool, int | None] | None:
    if not isinstance(document, dict):
        raise PoolError(f"{where}: expected a mapping, got {type(document).__name__}")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    metallb = isinstance(api_version, str) and api_version.startswith("metallb.io/")
    if metallb and kind != "IPAddressPool":
        return None  # advertisements, peers and the like configure MetalLB's speakers, not addresses
    if (api_version, kind) not in (
        (KUBEGATE_API_VERSION, "AddressPool"),
        (METALLB_API_VERSION, "IPAddressPool"),
    ):
        raise PoolError(
            f"{where}: {kind} ({api_version}) is not a pool; expected AddressPool ({KUBEGATE_API_VERSION}) "
            f"or IPAddressPool ({METALLB_API_VERSION})"
        )
    metadata = _mapping(document.get("metadata"), f"{where}: metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise PoolError(f"{where}: metadata.name is required")
    where = f"{where} pool {name}"
    spec = _mapping(document.get("spec"), f"{where}: spec")
    addresses = _strings(spec.get("addresses"), f"{where}: spec.addresses")
    if not addresses:
        raise PoolError(f"{where}: spec.addresses is required")
    auto_assign = _bool(spec.get("autoAssign", True), f"{where}: spec.autoAssign")
    avoid_buggy_ips = _bool(spec.get("avoidBuggyIPs", False), f"{where}: spec.avoidBuggyIPs")
    priority: int | None = None
    if kind == "AddressPool":
        unknown = sorted(set(spec) - set(_ADDRESS_POOL_FIELDS))
        if unknown:
            raise PoolError(
                f"{where}: spec.{unknown[0]} is not a field of AddressPool "
                f"(known: {', '.join(_ADDRESS_POOL_FIELDS)})"
            )
        namespaces = _strings(spec.get("namespaces"), f"{where}: spec.namespaces")
        classes = _strings(spec.get("loadBalancerClasses"), f"{where}: spec.loadBalancerClasses")
    else:
        allocation = _mapping(spec.get("serviceAllocation"), f"{where}: spec.serviceAllocation")
        for selector in ("namespaceSelectors", "serviceSelectors"):
            if allocation.get(selector):
                raise PoolError(
                    f"{where}: spec.serviceAllocation.{selector} is not supported by kubegate; list the "
                    "namespaces in spec.serviceAllocation.namespaces instead"
                )
        namespaces = _strings(allocation.get("namespaces"), f"{where}: spec.serviceAllocation.namespaces")
        classes = ()
        raw_priority = allocation.get("priority")
        if raw_priority is not None:
            if not isinstance(raw_priority, int) or isinstance(raw_priority, bool):
                raise PoolError(f"{where}: spec.serviceAllocation.priority must be an integer")
            priority = raw_priority
    pool = Pool(
        name=name,
        addresses=addresses,
        namespaces=namespaces,
        service_classes=classes,
        auto_assign=auto_assign,
        avoid_buggy_ips=avoid_buggy_ips,
    )
    _check_addresses(pool, where, field="spec.addresses")
    return pool, priority


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PoolError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PoolError(f"{where} must be a list of strings")
    return tuple(item.strip() for item in value)


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise PoolError(f"{where} must be true or false, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Validation


def _check_addresses(pool: Pool, where: str, field: str = "addresses") -> list[AddressRange]:
    ranges: list[AddressRange] = []
    for position, text in enumerate(pool.addresses):
        try:
            ranges.append(parse_address_range(text))
        except ValueError as error:
            raise PoolError(f"{where}: {field}[{position}]: {error}") from None
    return ranges


def validate_pools(pools: Sequence[Pool], source: str = "pools") -> None:
    """Reject duplicate names and overlapping addresses, within one pool or across pools. Works on the
    ranges' ends only (sorted sweep), so huge IPv6 pools are checked as fast as small ones."""
    seen: set[str] = set()
    spans: list[tuple[int, int, int, str, str]] = []
    for pool in pools:
        if pool.name in seen:
            raise PoolError(f"{source}: pool name {pool.name!r} is used twice")
        seen.add(pool.name)
        for text, address_range in zip(
            pool.addresses, _check_addresses(pool, f"{source}: pool {pool.name}"), strict=True
        ):
            spans.append((address_range.version, address_range.first, address_range.last, pool.name, text))
    spans.sort()
    for before, after in itertools.pairwise(spans):
        if before[0] == after[0] and after[1] <= before[2]:
            shared = format_value((after[0], after[1]))
            owners = f"pool {before[3]}" if before[3] == after[3] else f"pools {before[3]} and {after[3]}"
            raise PoolError(f"{source}: {owners} overlap: {before[4]} and {after[4]} both contain {shared}")
