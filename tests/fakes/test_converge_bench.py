"""bench/converge.py still runs end to end (a small size): the fake, a real gateway process, real traffic."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "converge.py"


@pytest.mark.slow
def test_converge_bench_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--ingresses", "20", "--changes", "2"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"hosts served after sync\s+20/20", result.stdout), result.stdout
    assert "(2 changes, 0 not followed in 5 s)" in result.stdout
