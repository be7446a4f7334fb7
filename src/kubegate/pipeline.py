"""One-shot pipeline for the CLI: load manifests, translate them, persist allocations.

The long-running `serve` keeps the same steps but repeats them on every change (reconcile.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from kubegate.objects.meta import ObjectKey, Origin
from kubegate.sources.files import LoadResult, Problem, line_of, load_paths
from kubegate.state import load_allocations, save_allocations
from kubegate.translate import translate
from kubegate.translate.context import Allocations, Options, Translation


@dataclass(frozen=True, slots=True)
class Outcome:
    load: LoadResult
    translation: Translation

    def problems(self) -> list[Problem]:
        """Every problem, from decoding and from translation, each placed at its file and line."""
        origins: dict[ObjectKey, Origin] = {}
        for loaded in self.load.objects:
            meta = loaded.obj.metadata
            namespace = "" if loaded.obj.kind == "IngressClass" else meta.namespace
            origins[ObjectKey(loaded.obj.kind, namespace, meta.name)] = loaded.origin
        found = list(self.load.problems)
        for diagnostic in self.translation.diagnostics:
            origin = origins.get(diagnostic.object, Origin("<translation>", 0, 0))
            if diagnostic.field and origin.line:
                origin = origin._replace(line=line_of(origin, diagnostic.field))
            found.append(
                Problem(
                    origin=origin,
                    object=diagnostic.object,
                    field=diagnostic.field,
                    message=diagnostic.message,
                    severity=diagnostic.severity,
                )
            )
        return sorted(found, key=lambda problem: (problem.origin.source, problem.origin.line))

    @property
    def error_count(self) -> int:
        return sum(1 for problem in self.problems() if problem.severity == "error")


def load_and_translate(
    paths: Sequence[str],
    options: Options,
    state_file: Path | None = None,
    stdin: TextIO | None = None,
) -> Outcome:
    """Load PATHs, translate, and when a state file is given, start from and save its allocations."""
    previous = load_allocations(state_file) if state_file is not None else Allocations()
    loaded = load_paths(paths, stdin)
    translation = translate(loaded.snapshot(), options, previous)
    if state_file is not None and translation.allocations != previous:
        save_allocations(state_file, translation.allocations)
    return Outcome(loaded, translation)
