"""Turn one rendered nftables ruleset into another with a small transaction instead of a full replace.

Loading a whole rendered table costs seconds at 10,000 Services (the kernel rebuilds every chain), while
one endpoint change touches one or two chains and a few set elements. ``incremental(old, new)`` compares
the two rulesets object by object and writes one ``nft -f`` script (still one atomic transaction) that
rewrites only what differs:

- changed regular chains: ``flush chain`` and their rules added again;
- new chains and sets/maps added, removed ones deleted;
- set and map elements that differ deleted and added.

``incremental_structured(before, after)`` writes the same script from two ``NftRenderer`` renderings
without any text: it compares only the shared objects and the per-Service groups that are not the same
object in both (one group for one endpoint change), and takes element changes of the shared maps from
what the later rendering says appeared and vanished (so it needs two consecutive renderings). At
10,000 Services x 10 endpoints it takes about 3 ms where parsing and comparing the two texts takes
0.4 s.

Order matters to the kernel, which refuses to delete a chain or set something still refers to, and
to add a rule or element that names a chain or set that does not exist yet: new objects are declared
first, then stale elements are deleted, changed and removed chains are flushed (dropping their
references), rules and new elements are added, and only then are removed chains and sets deleted.

It returns None for what it does not handle, so the caller falls back to a full replace: base chains
(hooks, priorities, policies) that differ, appear or vanish; sets or maps whose declaration (type,
flags, timeout) changes; anything in the table other than chains, sets and maps; input that is not a
rendered table of the expected shape. The kernel-side result of the script equals a full load of
``new`` except that dynamic sets (ClientIP affinity) keep their entries, which a full replace empties.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

_OBJECT = re.compile(r"\t(chain|set|map) (\S+) \{\Z")


@dataclass(frozen=True, slots=True)
class NftObject:
    """A top-level object of a table. ``body`` holds a chain's rules, or a set's or map's declaration lines
    (type, flags, timeout); ``items`` a set's or map's elements, each written with single spaces."""

    kind: str
    name: str
    body: tuple[str, ...]
    items: frozenset[str] = frozenset()
    # the object as the renderer wrote it (empty for parsed objects); not part of its identity
    text: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    @property
    def is_base_chain(self) -> bool:
        return self.kind == "chain" and any(
            line.startswith("type ") and " hook " in line for line in self.body
        )

    def declaration(self) -> tuple[str, ...]:
        """A set's or map's lines other than its elements (type, flags, timeout, ...)."""
        return self.body

    def elements(self) -> frozenset[str]:
        return self.items


@dataclass(frozen=True, slots=True)
class NftGroup:
    """What one Service contributes to a table: its own sets and chains, and elements of shared sets and
    maps as (set name, element). ``notes`` and ``order`` (one sort key per element) only shape the text."""

    objects: tuple[NftObject, ...]
    elements: tuple[tuple[str, str], ...]
    notes: tuple[str, ...] = field(default=(), compare=False)
    order: tuple[tuple[int, int, str, int, str], ...] = field(default=(), compare=False)


class StructuredRuleset(Protocol):
    """A rendered table as objects: ``shared`` ones rebuilt on every render (the fixed chains, the shared
    sets and maps, declared without the elements groups give them) and per-Service ``groups`` that a
    renderer reuses, as the same object, while the Service's inputs stay the same: a group that is the same
    object in two rulesets is skipped by the diff without a look. ``appeared`` and ``vanished`` are the
    (set name, element) pairs no group gave before and no group gives any more, relative to the rendering
    numbered ``base`` (the one before this, from the same renderer): an element two Services share stays
    while one of them still has it. ``changed`` names the Services whose group differs from that one's."""

    @property
    def family(self) -> str: ...

    @property
    def table(self) -> str: ...

    @property
    def shared(self) -> tuple[NftObject, ...]: ...

    @property
    def groups(self) -> Mapping[str, NftGroup]: ...

    @property
    def serial(self) -> int: ...

    @property
    def base(self) -> int: ...

    @property
    def appeared(self) -> frozenset[tuple[str, str]]: ...

    @property
    def vanished(self) -> frozenset[tuple[str, str]]: ...

    @property
    def changed(self) -> frozenset[str]: ...


class UnhandledRuleset(ValueError):
    """The ruleset is not in the shape ``parse_table`` understands; the message says where."""


def _split_elements(body: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
    text = "\n".join(body)
    start = text.find("elements = {")
    if start < 0:
        return body, frozenset()
    end = text.find("}", start)
    inner = text[start + len("elements = {") : end]
    if end < 0 or "{" in inner:
        raise UnhandledRuleset("set elements with nested braces")
    declaration = tuple(line for line in (text[:start] + text[end + 1 :]).splitlines() if line.strip())
    # an element never contains a comma in what the renderer writes (concatenations use " . ")
    return declaration, frozenset(" ".join(e.split()) for e in inner.split(",") if e.strip())


def parse_table(ruleset: str, family: str, table: str) -> dict[tuple[str, str], NftObject]:
    """The chains, sets and maps of table ``family table`` in a rendered ruleset or an ``nft list table``
    listing, keyed by (kind, name). Raises UnhandledRuleset for anything else inside the table."""
    lines = ruleset.splitlines()
    opening = f"table {family} {table} {{"
    try:
        index = lines.index(opening) + 1
    except ValueError:
        raise UnhandledRuleset(f"no line {opening!r}") from None
    objects: dict[tuple[str, str], NftObject] = {}
    while index < len(lines):
        line = lines[index]
        index += 1
        if line == "}":
            return objects
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _OBJECT.match(line)
        if found is None:
            raise UnhandledRuleset(f"line {index}: {line.strip()!r} is not a chain, set or map")
        body: list[str] = []
        while index < len(lines) and lines[index] != "\t}":
            text = lines[index].strip()
            index += 1
            if text and not text.startswith("#"):
                body.append(text)
        if index == len(lines):
            raise UnhandledRuleset(f"{found.group(1)} {found.group(2)} is not closed")
        index += 1
        key = (found.group(1), found.group(2))
        if key in objects:
            raise UnhandledRuleset(f"{key[0]} {key[1]} appears twice")
        if key[0] == "chain":
            objects[key] = NftObject(key[0], key[1], tuple(body))
        else:
            declaration, items = _split_elements(tuple(body))
            objects[key] = NftObject(key[0], key[1], declaration, items)
    raise UnhandledRuleset(f"table {family} {table} is not closed")


def _chain_rules(chain: NftObject) -> list[str]:
    for rule in chain.body:
        # one rule per line is what the renderer writes; a multi-line construct is not a rule to re-add
        if rule.endswith("{") or rule == "}":
            raise UnhandledRuleset(f"chain {chain.name}: multi-line rule")
    return list(chain.body)


def incremental(old: str, new: str, family: str, table: str) -> str | None:
    """One nft script turning the loaded ruleset ``old`` into ``new`` (empty when they do not differ in
    the kernel's terms), or None when the change needs a full replace."""
    try:
        before = parse_table(old, family, table)
        after = parse_table(new, family, table)
        return _script(before, after, f"{family} {table}")
    except UnhandledRuleset:
        return None


def incremental_structured(before: StructuredRuleset, after: StructuredRuleset) -> str | None:
    """``incremental`` for two rendered rulesets kept as objects: only the shared objects and the groups
    that are not the very same object in both are compared, so one changed Service costs one group.
    ``after`` must be the rendering that followed ``before`` from the same renderer (else None: the
    element changes in between are not known here)."""
    if before is after:
        return ""
    if (before.family, before.table) != (after.family, after.table) or after.base != before.serial:
        return None
    old: dict[tuple[str, str], NftObject] = {obj.key: obj for obj in before.shared}
    new: dict[tuple[str, str], NftObject] = {obj.key: obj for obj in after.shared}
    # names are unique in a table, so an object of an unchanged group appears in no changed one; the
    # later rendering names the groups that changed, so the other 10,000 are not even looked at
    for name in after.changed:
        if (group := before.groups.get(name)) is not None:
            old.update((obj.key, obj) for obj in group.objects)
        if (group := after.groups.get(name)) is not None:
            new.update((obj.key, obj) for obj in group.objects)
    gone: dict[str, list[str]] = {}
    fresh: dict[str, list[str]] = {}
    for target, element in after.vanished:
        gone.setdefault(target, []).append(element)
    for target, element in after.appeared:
        fresh.setdefault(target, []).append(element)
    try:
        return _script(old, new, f"{after.family} {after.table}", gone, fresh)
    except UnhandledRuleset:
        return None


def _script(
    before: Mapping[tuple[str, str], NftObject],
    after: Mapping[tuple[str, str], NftObject],
    where: str,
    given_gone: Mapping[str, list[str]] | None = None,
    given_fresh: Mapping[str, list[str]] | None = None,
) -> str:
    """The script; ``given_gone`` and ``given_fresh`` are element changes of sets and maps beyond their
    own items (what groups give shared sets), by set name."""
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if (old is not None and old.is_base_chain) or (new is not None and new.is_base_chain):
            raise UnhandledRuleset(f"base chain {key[1]} changes")
        if (
            old is not None
            and new is not None
            and old.kind != "chain"
            and old.declaration() != new.declaration()
        ):
            raise UnhandledRuleset(f"{key[0]} {key[1]}: declaration changes")

    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(key for key in before.keys() & after.keys() if before[key] != after[key])
    declare: list[str] = []
    stale: list[str] = []
    flush: list[str] = []
    fill: list[str] = []
    delete: list[str] = []
    for kind, name in added:
        obj = after[(kind, name)]
        if kind == "chain":
            declare.append(f"add chain {where} {name}")
            fill += [f"add rule {where} {name} {rule}" for rule in _chain_rules(obj)]
        else:
            declare.append(f"add {kind} {where} {name} {{ {'; '.join(obj.declaration())}; }}")
            if obj.elements():
                fill.append(f"add element {where} {name} {{ {', '.join(sorted(obj.elements()))} }}")
    for kind, name in changed:
        old, new = before[(kind, name)], after[(kind, name)]
        if kind == "chain":
            flush.append(f"flush chain {where} {name}")
            fill += [f"add rule {where} {name} {rule}" for rule in _chain_rules(new)]
            continue
        if gone := old.elements() - new.elements():
            # a map element is deleted by its key alone (its verdict may be changing in this same script)
            keys = sorted(element.split(" : ")[0] for element in gone)
            stale.append(f"delete element {where} {name} {{ {', '.join(keys)} }}")
        if fresh := new.elements() - old.elements():
            fill.append(f"add element {where} {name} {{ {', '.join(sorted(fresh))} }}")
    vanishing = {name for kind, name in removed if kind != "chain"}
    for name, elements in sorted((given_gone or {}).items()):
        if name not in vanishing:
            keys = sorted(element.split(" : ")[0] for element in elements)
            stale.append(f"delete element {where} {name} {{ {', '.join(keys)} }}")
    for name, elements in sorted((given_fresh or {}).items()):
        fill.append(f"add element {where} {name} {{ {', '.join(sorted(elements))} }}")
    # removed chains lose their rules first so a removed chain jumping to another removed one, or
    # naming a removed set, does not block that one's deletion
    for kind, name in removed:
        if kind == "chain":
            flush.append(f"flush chain {where} {name}")
            delete.append(f"delete chain {where} {name}")
    delete += [f"delete {kind} {where} {name}" for kind, name in removed if kind != "chain"]
    lines = declare + stale + flush + fill + delete
    return "".join(line + "\n" for line in lines)
