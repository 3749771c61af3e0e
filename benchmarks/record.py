"""The throughputs the project's benchmarks measured, kept in one file (benchmarks/measured.json)
that ``scencode plan`` prices runs from. A benchmark run with ``--record`` replaces its entry,
stamped with the date, the commit and the machine."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

MEASURED = Path(__file__).resolve().parent / "measured.json"


def record(key: str, value: float, unit: str, benchmark: str, detail: str) -> dict:
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=MEASURED.parent
        ).stdout.strip()
        or "unknown"
    )
    entry = {
        "value": value,
        "unit": unit,
        "benchmark": benchmark,
        "detail": detail,
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
    }
    measured = json.loads(MEASURED.read_text()) if MEASURED.exists() else {}
    measured[key] = entry
    tmp = MEASURED.with_suffix(".tmp")
    tmp.write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    tmp.replace(MEASURED)
    return entry
