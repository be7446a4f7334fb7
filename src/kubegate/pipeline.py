"""One-shot pipeline for the CLI: load manifests, translate them, persist allocations.

The long-running `serve` keeps the same steps but repeats them on every change (reconcile.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from kubegate.objects.meta import ObjectKey, Origin
from kubegate.objects.snapshot import Snapshot
from kubegate.sources.files import LoadResult, Problem, line_of, load_paths
from kubegate.state import load_allocations, save_allocations
from kubegate.store import object_key
from kubegate.translate import translate
from kubegate.translate.context import Allocations, Diagnostic, Options, Translation


@dataclass(frozen=True, slots=True)
class Outcome:
    load: LoadResult
    # the snapshot that was translated (built once, here, for the commands that list objects)
    snapshot: Snapshot
    translation: Translation

    def problems(self) -> list[Problem]:
        """Every problem, from decoding and from translation, each placed at its file and line."""
        origins = {object_key(loaded.obj): loaded.origin for loaded in self.load.objects}
        placed = place_diagnostics(self.translation.diagnostics, origins.get)
        found = [*self.load.problems, *placed]
        return sorted(found, key=lambda problem: (problem.origin.source, problem.origin.line))


def place_diagnostics(
    diagnostics: Iterable[Diagnostic], origin_of: Callable[[ObjectKey], Origin | None]
) -> list[Problem]:
    """Translator diagnostics as Problems at the file and line of the object (and field) they concern."""
    placed = []
    for diagnostic in diagnostics:
        origin = origin_of(diagnostic.object) or Origin("<translation>", 0, 0)
        if diagnostic.field and origin.line:
            origin = origin._replace(line=line_of(origin, diagnostic.field))
        placed.append(
            Problem(origin, diagnostic.object, diagnostic.field, diagnostic.message, diagnostic.severity)
        )
    return placed


def load_and_translate(
    paths: Sequence[str],
    options: Options,
    state_file: Path | None = None,
    stdin: TextIO | None = None,
) -> Outcome:
    """Load PATHs, translate, and when a state file is given, start from and save its allocations."""
    previous = load_allocations(state_file) if state_file is not None else Allocations()
    loaded = load_paths(paths, stdin)
    snapshot = loaded.snapshot()
    translation = translate(snapshot, options, previous)
    if state_file is not None and translation.allocations != previous:
        save_allocations(state_file, translation.allocations)
    return Outcome(loaded, snapshot, translation)
