"""bench/translate.py --quick runs to the end and reports every figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_completes() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "translate.py"), "--quick", "--rounds", "2"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for measure in ("full translation", "peak memory growth", "one Ingress changed"):
        assert measure in done.stdout
    assert "1000 Ingresses" in done.stdout and "10000 endpoints" in done.stdout
