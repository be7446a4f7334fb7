"""Golden translation cases: ``<case>.in.yaml`` (a manifest) -> ``<case>.out.yaml`` (the dumped IR).

The first document of an input may be a header without ``kind``: ``{options: {...}}`` overrides
translate Options for that case (``pools`` as a list of mappings). A sibling ``<case>.options.yaml``
does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubegate.objects.decode import decode_object
from kubegate.objects.kinds import KubeObject
from kubegate.translate.context import Options, Pool

CASES = Path(__file__).parent / "translate"


def _options(overrides: dict[str, Any]) -> Options:
    values = dict(overrides)
    if "pools" in values:
        values["pools"] = tuple(
            Pool(**{key: tuple(v) if isinstance(v, list) else v for key, v in pool.items()})  # type: ignore[arg-type]
            for pool in values["pools"]
        )
    for key in ("publish_addresses", "node_port_range"):
        if key in values:
            values[key] = tuple(values[key])
    return Options(**values)


def load_case(path: Path) -> tuple[list[KubeObject], Options]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    overrides: dict[str, Any] = {}
    if documents and "kind" not in documents[0]:
        overrides.update(documents.pop(0).get("options", {}))
    sibling = path.with_name(path.name.replace(".in.yaml", ".options.yaml"))
    if sibling.exists():
        overrides.update(yaml.safe_load(sibling.read_text()).get("options", {}))
    return [decode_object(doc) for doc in documents], _options(overrides)


def case_paths() -> list[Path]:
    return sorted(CASES.glob("*.in.yaml"))
