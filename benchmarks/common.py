"""Shared by the benchmark scripts: repeatable timing and a description of the machine."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable


def time_call(fn: Callable[[], object], *, repeats: int, warmup: int = 10,
              sync: Callable[[], None] | None = None) -> dict:
    """Median, p99 and min of `repeats` timed calls after `warmup` untimed ones, in milliseconds."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p99_ms": samples[min(len(samples) - 1, int(0.99 * len(samples)))],
            "min_ms": samples[0], "repeats": repeats}


from edge_ad.runtime.bench import cpu_name  # noqa: E402,F401 - one definition, shared with `edge-ad bench`


# one import name, several distributions
ALIASES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
           "opencv-python": ("opencv-python", "opencv-python-headless")}


def environment(packages: tuple[str, ...]) -> dict:
    versions = {}
    for name in packages:
        versions[name] = None
        for dist in ALIASES.get(name, (name,)):
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_json(path: str | Path, payload: dict, *, quiet: bool = False) -> None:
    """Write a results file atomically: a temporary of its own beside it, fsync, rename. A kill, a full
    disk or a second benchmark writing at the same time leaves the old file or the new one, never a torn
    one (the temporary is removed on failure)."""
    from edge_ad.runtime.bench import write_text_atomic

    path = Path(path)
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")   # serialized first: a bad payload writes nothing
    if not quiet:
        print(f"wrote {path}")


def read_results(path: str | Path) -> dict:
    """A results file written by write_json, {} when there is none. A file that is not a JSON object
    (torn by an older, non-atomic writer, or edited) is refused with a message: it holds other
    models' figures that a rewrite would lose."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SystemExit(f"cannot read the results file {path} ({str(err)[:120]}): it is damaged (a torn write?). "
                         f"Restore it (e.g. `git checkout -- {path}`) or move it away, then run again") from None
    if not isinstance(results, dict):
        raise SystemExit(f"the results file {path} is not a JSON object; restore it or move it away, then run again")
    return results
