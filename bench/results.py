"""Benchmark results as JSON and CSV under ``bench/results/``, with the machine they were measured on.

A result file holds ``{"env": {...}, "rows": [...]}``; the CSV beside it has one line per row and the
environment repeated in its leading columns, so each line stands alone.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ENV_COLUMNS = ("gpu", "driver", "torch", "triton", "cuda", "git_sha", "date")


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=RESULTS.parent, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=RESULTS.parent,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


SMI_FIELDS = ("driver_version", "clocks.sm", "clocks.max.sm", "power.limit", "temperature.gpu")


def _nvidia_smi() -> dict:
    """Driver, SM clock (now and max), power limit and temperature of GPU 0 from ``nvidia-smi``."""
    try:
        line = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader",
                               "--id=0"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    values = [v.strip() for v in line.split(",")]
    return dict(zip(("driver", "sm_clock", "sm_clock_max", "power_limit", "temperature"), values))


def environment() -> dict:
    """GPU name (or "cpu: <processor model>"), driver, clocks and power limit, library versions, git sha,
    the date (UTC) and the CPU."""
    import triton

    on_gpu = torch.cuda.is_available()
    smi = _nvidia_smi() if on_gpu else {}
    return {
        "gpu": torch.cuda.get_device_name() if on_gpu else f"cpu: {cpu_model()}",
        "driver": smi.pop("driver", ""),
        **smi,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda or "",
        "git_sha": git_sha(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),     # other work on the host skews host timings
    }


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def write(kind: str, rows: list[dict], env: dict, directory: Optional[Path] = None) -> tuple[Path, Path]:
    """Write ``<kind>-<gpu>-<date>.json`` and ``.csv``; returns both paths."""
    directory = Path(directory or RESULTS)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{kind}-{slug(env['gpu'])}-{slug(env['date'])}"
    jpath, cpath = directory / f"{stem}.json", directory / f"{stem}.csv"
    jpath.write_text(json.dumps({"kind": kind, "env": env, "rows": rows}, indent=1) + "\n")
    columns = list(ENV_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    with cpath.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({**{k: env.get(k, "") for k in ENV_COLUMNS}, **row})
    return jpath, cpath


def read(path: Path) -> dict:
    """A JSON result file back as ``{"kind", "env", "rows"}``."""
    return json.loads(Path(path).read_text())


def latest(kind: str, directory: Optional[Path] = None) -> list[Path]:
    """JSON result files of ``kind``, newest first."""
    directory = Path(directory or RESULTS)
    return sorted(directory.glob(f"{kind}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
