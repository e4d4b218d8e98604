"""`edge-ad predict`: a bundle on image files, folders and globs; an overlay per image and a table of results.

What is read: a file named on the command line (whatever its suffix: a bad one becomes an error row);
a folder, recursively (image suffixes only, hidden folders skipped, symbolic links to folders not
followed); a glob the shell did not expand (quoted: `"parts/**/*.png"`, `**` matching any depth), its
image files and its folders as above. The same file reached twice is predicted once; nothing under
the output folder is read (the overlays of an earlier run stay out). Hostile entries never stop the
run: a symbolic link loop, a link to a missing file, a FIFO or device, a folder that cannot be listed
each get an error row saying which (a FIFO is never opened, so it cannot hang the run).

What is written under OUT: `overlays/<name>.png` (the original beside its heat map, the anomalous
region outlined, verdict and scores), `results.csv` and `results.jsonl` with one row per image: path,
score, normalized_score, verdict, overlay (relative to OUT), error. An image that cannot be read or
whose inference fails gets a row with its error and no verdict; the others go on. Rows are written
as each batch finishes, so an interrupted run keeps what it did. An image its ROI or tiles do not fit
(too small for the tile grid, a ROI past its edge) gets an error row too. Text is UTF-8: a file name
whose bytes are not valid UTF-8 shows each such byte as \\xNN (Python's "backslashreplace"), in both
files and on the terminal. No torch (the runtime side).
"""

from __future__ import annotations

import csv
import errno
import glob
import json
import os
import re
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, TextIO

import cv2
import numpy as np

from edge_ad.imaging import IMAGE_SUFFIXES, ImageReadError, read_image
from edge_ad.regions import ViewError
from edge_ad.runtime.detector import Detector
from edge_ad.runtime.overlays import encode_png, render_panel, verdict_lines
from edge_ad.runtime.result import InferenceError, Result

DEFAULT_BATCH = 8                 # images per inference when the backend takes any batch
OVERLAYS, RESULTS_CSV, RESULTS_JSONL = "overlays", "results.csv", "results.jsonl"
FIELDS = ("path", "score", "normalized_score", "verdict", "overlay", "error")
GLOB_CHARS = frozenset("*?[")
MAX_NAME = 120                    # characters of an overlay's name before its suffix
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Row:
    """One image's line of results.csv / results.jsonl (score fields None when `error` is set)."""

    path: str
    score: float | None = None
    normalized_score: float | None = None
    verdict: str | None = None            # "anomalous" or "normal"
    overlay: str | None = None            # relative to the output folder
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    """The counts of a finished prediction."""

    images: int
    anomalous: int
    normal: int
    failed: int
    out: Path

    def line(self) -> str:
        """The one line `edge-ad predict` ends with."""
        failed = f", {self.failed} failed (unreadable or no result: see the error column)" if self.failed else ""
        return (f"predicted {self.images - self.failed} of {self.images} images: {self.anomalous} anomalous, "
                f"{self.normal} normal{failed}; results in {self.out / RESULTS_CSV}, {self.out / RESULTS_JSONL}, "
                f"overlays in {self.out / OVERLAYS}/")


# Finding the images -------------------------------------------------------------------------------------

def collect_images(args: list[str], *, exclude: Path | None = None) -> list[Path]:
    """The image files named by `args` (files, folders, globs), in order, each once; nothing inside
    `exclude`. A name that matches nothing is a FileNotFoundError saying which."""
    found: list[Path] = []
    seen: set[Path] = set()
    skip = _identity(exclude) if exclude is not None else None
    for arg in args:
        for path in _expand(arg):
            key = _identity(path)
            if key in seen or (skip is not None and key.is_relative_to(skip)):
                continue
            seen.add(key)
            found.append(path)
    if not found:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, args))}")
    return found


def _identity(path: Path) -> Path:
    """The real path of `path`, to tell two names of one file apart; never raises (a symbolic link
    loop or an unreachable folder keeps its absolute spelling: its read gets the error row)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):           # RuntimeError: a symlink loop before Python 3.13
        return Path(os.path.abspath(path))


def _kind(path: Path) -> str:
    """"folder", "missing", or "entry": anything else that exists, even a link loop or a FIFO (read
    later, where it gets its error row)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "entry" if os.path.islink(path) else "missing"
    except (OSError, ValueError):             # a loop, permission denied, an over-long name
        return "entry"
    return "folder" if stat.S_ISDIR(mode) else "entry"


def _expand(arg: str) -> list[Path]:
    """One command-line argument -> its image files."""
    path = Path(arg)
    kind = _kind(path)
    if kind == "folder":
        return images_under(path)
    if kind == "entry":
        return [path]
    if GLOB_CHARS & set(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            raise FileNotFoundError(f"{arg!r} matches no file")
        out: list[Path] = []
        for match in map(Path, matches):
            out += images_under(match) if _kind(match) == "folder" else ([match] if _is_image_name(match) else [])
        return out
    raise FileNotFoundError(f"{arg}: no such file or folder")


def images_under(folder: Path) -> list[Path]:
    """Image files under `folder` at any depth, sorted by path; hidden files and folders and links to
    folders skipped. A folder that cannot be listed is itself in the list (its row says why)."""
    out: list[Path] = []
    for root, dirs, files in os.walk(folder, onerror=lambda err: out.append(Path(err.filename))):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(root) / f for f in files if _is_image_name(Path(f)) and not f.startswith(".")]
    return sorted(out)


def entry_problem(path: Path) -> str | None:
    """Why `path` cannot be read as an image file (None: a regular file, read it): a link loop, a link
    to a missing file, a folder that cannot be listed, a FIFO, socket or device (never opened: a FIFO
    would block the run)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link loop (the link points back to itself)"
        if os.path.islink(path) and err.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"a symbolic link to a missing file ({os.readlink(path)})"
        return f"cannot reach it: {err.strerror or err}"
    if stat.S_ISDIR(mode):
        try:
            os.listdir(path)
        except OSError as err:
            return f"a folder that cannot be listed ({err.strerror or err}): its images were not predicted"
        return "a folder, not an image file"
    if not stat.S_ISREG(mode):
        return f"not a regular file ({_special_kind(mode)}); only image files are read"
    return None


def _special_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a special file"


def printable(text: str) -> str:
    """`text` (a path, or a message naming one) as valid UTF-8: the bytes of a file name that are not
    UTF-8 (held by Python as surrogates) shown as \\xNN, Python's "backslashreplace" escape of the
    file name's bytes; any other text unchanged."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:                # a surrogate no file name decodes to
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return data.decode("utf-8", "backslashreplace")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def overlay_names(paths: list[Path]) -> list[str]:
    """A distinct file name (no folder, '.png') per image: its path below the folder all the images share,
    folders joined with '__', characters other than letters, digits, '.', '_' and '-' as '_'; a clash
    (a.png and a.jpg; names differing in case only) gets -2, -3, ..."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    try:
        base = Path(os.path.commonpath([p.parent for p in absolute]))
    except ValueError:                    # different drives (Windows)
        base = None
    names, used = [], set()
    for path in absolute:
        parts = path.relative_to(base).parts if base is not None else path.parts[1:]
        stem = _UNSAFE.sub("_", "__".join([*parts[:-1], Path(parts[-1]).stem])).strip("_.") or "image"
        stem = stem[-MAX_NAME:].lstrip("_.") or "image"
        name, n = stem, 1
        while name.casefold() in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name.casefold())
        names.append(name + ".png")
    return names


# Writing the results ------------------------------------------------------------------------------------

def csv_cell(value) -> str:
    """A value as a CSV cell a spreadsheet shows as text: None -> empty; a text starting with = + - @
    (a formula to Excel and LibreOffice) gets a leading apostrophe. csv.writer quotes commas, quotes
    and line breaks; results.jsonl keeps every name as is (both escape non-UTF-8 bytes: see printable)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


class ResultWriter:
    """results.csv and results.jsonl, a row at a time (flushed per batch)."""

    def __init__(self, out: Path) -> None:
        # rows come escaped (printable); backslashreplace is the backstop: never refuse to write a row
        self._csv_file: TextIO = open(out / RESULTS_CSV, "w", newline="", encoding="utf-8", errors="backslashreplace")
        self._jsonl: TextIO = open(out / RESULTS_JSONL, "w", encoding="utf-8", errors="backslashreplace")
        self._csv = csv.writer(self._csv_file)
        self._csv.writerow(FIELDS)

    def write(self, rows: list[Row]) -> None:
        """Append `rows` to both files, their text escaped by printable(), and flush."""
        for row in map(printable_row, rows):
            self._csv.writerow([csv_cell(getattr(row, f)) for f in FIELDS])
            self._jsonl.write(json.dumps(asdict(row), allow_nan=False) + "\n")
        self._csv_file.flush()
        self._jsonl.flush()

    def close(self) -> None:
        self._csv_file.close()
        self._jsonl.close()


def prepare_out(out: Path, *, overwrite: bool) -> None:
    """Create OUT (and OUT/overlays); one that holds an earlier run's results is refused unless
    `overwrite`, which removes that run's overlay PNGs (nothing else in OUT is touched)."""
    earlier = [n for n in (RESULTS_CSV, RESULTS_JSONL, OVERLAYS) if os.path.lexists(out / n)]
    if earlier and not overwrite:
        raise FileExistsError(f"{out} holds the results of an earlier prediction ({', '.join(earlier)}); choose "
                              "another --out, or pass --overwrite to replace them")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder")
    overlays = out / OVERLAYS
    if overlays.is_dir() and not overlays.is_symlink():
        for old in overlays.glob("*.png"):
            if old.is_file() and not old.is_symlink():
                old.unlink()
    overlays.mkdir(parents=True, exist_ok=True)


def printable_row(row: Row) -> Row:
    """`row` with its text fields passed through printable()."""
    return Row(**{k: printable(v) if isinstance(v, str) else v for k, v in asdict(row).items()})


# Predicting ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PredictJob:
    """The images and their overlay names, found and checked before a bundle is loaded."""

    images: list[Path]
    names: list[str]
    out: Path

    @classmethod
    def plan(cls, args: list[str], out: str | Path, *, overwrite: bool = False) -> "PredictJob":
        """Find the images named by `args` and make the output folder ready (see prepare_out)."""
        out = Path(out)
        images = collect_images(list(args), exclude=out)
        prepare_out(out, overwrite=overwrite)
        return cls(images, overlay_names(images), out)

    def run(self, detector: Detector, *, batch: int | None = None, max_pixels: int | None = None,
            echo: Callable[[str], None] | None = None, view: dict | None = None) -> Summary:
        """Predict every image in batches (`batch`, else the backend's largest, else DEFAULT_BATCH),
        writing the overlays and the rows; `echo` gets one line per image that failed. `view`: the
        roi/tiles/overlap keywords of Detector.predict, the same for every image."""
        size = batch or detector.max_batch or DEFAULT_BATCH
        if detector.max_batch:
            size = min(size, detector.max_batch)
        writer = ResultWriter(self.out)
        counts = {"anomalous": 0, "normal": 0, "failed": 0}
        try:
            for start in range(0, len(self.images), size):
                rows = [printable_row(r) for r in self._chunk(detector, start, start + size, max_pixels,
                                                              dict(view or {}))]
                writer.write(rows)
                for row in rows:
                    counts["failed" if row.error else row.verdict] += 1
                    if row.error and echo is not None:
                        echo(f"{row.path}: {row.error}")
        finally:
            writer.close()
        return Summary(len(self.images), counts["anomalous"], counts["normal"], counts["failed"], self.out)

    def _chunk(self, detector: Detector, start: int, stop: int, max_pixels: int | None, view: dict) -> list[Row]:
        """Rows of images [start, stop): read each (a bad file is its own error), one inference for the rest."""
        rows: dict[int, Row] = {}
        images: dict[int, np.ndarray] = {}
        for i in range(start, min(stop, len(self.images))):
            problem = entry_problem(self.images[i])
            if problem is not None:
                rows[i] = Row(str(self.images[i]), error=f"unreadable: {problem}")
                continue
            try:
                images[i] = read_image(self.images[i], max_pixels=max_pixels)
            except (ImageReadError, OSError) as err:
                rows[i] = Row(str(self.images[i]), error=f"unreadable: {err}")
        if images:
            order = list(images)
            for i, result in zip(order, _predict(detector, [images[i] for i in order], view)):
                rows[i] = self._row(i, images[i], result, detector.threshold)
        return [rows[i] for i in sorted(rows)]

    def _row(self, i: int, rgb: np.ndarray, result: Result | str, threshold: float) -> Row:
        """The row of image i: its result and overlay, or the inference error (a string)."""
        path = str(self.images[i])
        if isinstance(result, str):
            return Row(path, error=result)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        panel = render_panel(bgr, result.heatmap, result.mask,
                             verdict_lines(result.is_anomalous, result.score, result.normalized_score, threshold,
                                           self.images[i].name))
        overlay = Path(OVERLAYS) / self.names[i]
        (self.out / overlay).write_bytes(encode_png(panel))
        return Row(path, result.score, result.normalized_score, "anomalous" if result.is_anomalous else "normal",
                   overlay.as_posix())


def _predict(detector: Detector, images: list[np.ndarray], view: dict) -> list[Result | str]:
    """One batched inference; an image whose output is not finite, or that its ROI or tiles do not fit
    (a ViewError, whose message names the ROI or tiles), gets the error text instead of a Result (a
    batch with such an image is retried image by image)."""
    try:
        return list(detector.predict(images, color="RGB", **view))
    except ViewError as err:
        if len(images) == 1:
            return [str(err)]
        return [r for image in images for r in _predict(detector, [image], view)]
    except InferenceError as err:
        results = err.results or [None] * len(images)
        return [r if r is not None else "inference failed: the model's output is not finite (NaN/inf)"
                for r in results]
