"""Run records: one JSON per run under results/runs/<experiment>/<run_id>.json.

A record holds the run's config (and its hash, which names the file), metrics, timings, versions,
device and thread count. Records are written atomically (temporary file, fsync, rename), so an
interrupted run never leaves a partial record; a run whose record exists can be skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from .paths import results_dir
from .staging import remove_orphans, temporary_file, tidy

# When set, every run_once appends a JSON line {experiment, run_id, computed} to this file: which records a
# notebook used (make reproduce keeps one log per notebook; report.compute_cost sums their recorded times).
RECORD_LOG_ENV = "STRUCTPRUNE_RECORD_LOG"


def config_hash(config: dict) -> str:
    canonical = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_path(experiment: str, config: dict, root: Path | None = None) -> Path:
    return (root or results_dir() / "runs") / experiment / f"{config_hash(config)[:16]}.json"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, device and threads: what a reader needs to trust or re-run a number."""
    import torch
    import transformers

    from . import __version__

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "structprune": __version__}
    try:
        versions["lm_eval"] = metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        versions["lm_eval"] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    # "device" is where this process computed: the GPU only if CUDA was used, else the CPU (a GPU merely
    # present on the machine does not make a CPU run a GPU number)
    device = gpu if torch.cuda.is_initialized() else f"cpu: {cpu_name()}"
    return {"versions": versions, "git_commit": git_commit(), "device": device, "gpu": gpu,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform()}


def cpu_name() -> str:
    """The processor's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def atomic_write_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a temporary in the folder's staging folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)
    tmp = temporary_file(path)
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        tidy(path.parent)


def write_record(experiment: str, config: dict, metrics: dict, timings: dict | None = None,
                 extra: dict | None = None, path: Path | None = None) -> Path:
    """Write a run record atomically and return its path."""
    path = Path(path) if path else record_path(experiment, config)
    record = {
        "experiment": experiment,
        "run_id": config_hash(config)[:16],
        "config_hash": config_hash(config),
        "config": config,
        "metrics": metrics,
        "timings": timings or {},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **environment(),
        **(extra or {}),
    }
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    return path


def find_record(experiment: str, config: dict) -> dict | None:
    """The existing record of this exact config, if the run already finished."""
    path = record_path(experiment, config)
    return json.loads(path.read_text()) if path.is_file() else None


def run_once(experiment: str, config: dict, compute: Callable[[], tuple[dict, dict]]) -> dict:
    """The record of `config`, computing it first if this exact run has not finished before.

    compute() -> (metrics, timings). This is what makes notebooks and sweeps resumable: an interrupted
    run left no record (records are atomic), so it is simply run again.
    """
    record = find_record(experiment, config)
    computed = record is None
    if computed:
        start = time.perf_counter()
        metrics, timings = compute()
        timings = {**timings, "wall_seconds": time.perf_counter() - start}
        record = json.loads(write_record(experiment, config, metrics, timings).read_text())
    if os.environ.get(RECORD_LOG_ENV):
        with open(os.environ[RECORD_LOG_ENV], "a") as log:
            log.write(json.dumps({"experiment": experiment, "run_id": record["run_id"], "computed": computed}) + "\n")
    return record


def record_list(experiment: str, root: Path | None = None) -> list[dict]:
    """Every record of `experiment` (under `root`, default results/runs), in file-name order."""
    root = Path(root or results_dir() / "runs")
    return [json.loads(p.read_text()) for p in sorted((root / experiment).glob("*.json"))]


def load_records(root: Path | None = None, experiment: str | None = None):
    """All records as a pandas DataFrame, nested fields flattened with dots (config.method, ...)."""
    import pandas as pd

    root = root or results_dir() / "runs"
    pattern = f"{experiment}/*.json" if experiment else "*/*.json"
    rows = [json.loads(p.read_text()) for p in sorted(Path(root).glob(pattern))]
    return pd.json_normalize(rows) if rows else pd.DataFrame()
