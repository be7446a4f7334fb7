"""Objects in -> IR and diagnostics out, compared with the checked-in ``.out.yaml`` files.

Run ``pytest --update-golden`` to rewrite them after an intended change, then review the diff.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from kubegate.ir.dump import dump_translation
from kubegate.ir.validate import problems
from kubegate.objects.snapshot import Snapshot
from kubegate.translate import translate
from tests.golden.harness import case_paths, load_case


@pytest.mark.parametrize("case", case_paths(), ids=lambda path: path.name.removesuffix(".in.yaml"))
def test_golden(case: Path, request: pytest.FixtureRequest) -> None:
    objects, options = load_case(case)
    translation = translate(Snapshot.of(objects), options)
    assert problems(translation.routing, translation.endpoints) == []
    produced = dump_translation(translation)
    expected_path = case.with_name(case.name.replace(".in.yaml", ".out.yaml"))
    if request.config.getoption("--update-golden"):
        expected_path.write_text(produced)
        return
    assert expected_path.exists(), f"{expected_path.name} is missing: run pytest --update-golden"
    expected = expected_path.read_text()
    if produced != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                produced.splitlines(keepends=True),
                fromfile=f"{expected_path.name} (expected)",
                tofile="produced",
            )
        )
        pytest.fail(f"translation of {case.name} differs from {expected_path.name}:\n{diff}", pytrace=False)


def test_every_case_has_golden_output() -> None:
    assert case_paths(), "no golden cases found"
    for case in case_paths():
        assert case.with_name(case.name.replace(".in.yaml", ".out.yaml")).exists(), case.name
