"""The on-disk bundle: a directory with meta.json, model.onnx (+ engines/, checkpoint.pt).

Layout written by `write_bundle` (every export, first or `--overwrite`):

    BUNDLE/.versions/v3/          the complete files of the newest export (meta.json, model.onnx, ...)
    BUNDLE/.versions/v2/          the one before (and any replaced in the last minute): a reader that
                                  opened it mid-overwrite finishes
    BUNDLE/.current -> .versions/v3
    BUNDLE/meta.json -> .current/meta.json, BUNDLE/model.onnx -> .current/model.onnx, ...
    BUNDLE/.lock                  one export at a time (a second one gets a clear error at once)

An export fills a temporary sibling (`.BUNDLE.XXXXXXXX.partial`, locked while its exporter lives, so the
next export removes only abandoned ones), renames it to the next version and swaps `.current` with one
`os.replace` of a symlink: readers see the old bundle or the new one, never a mix or none, and a kill
at any moment leaves the last complete bundle. The links are relative, so `cp -a`, `rsync -a` and
`tar` copy a bundle whole, and a copy that follows links (`cp -rL`, `shutil.copytree`) still reads.
Plain directories (bundles of earlier versions, copies) read as before and are converted on overwrite.

Reading resolves `meta.json` once (which pins the version), checks its schema before anything else
(types, ranges, finite calibration, names that become paths, geometry), then the size and sha256 of
every listed file and that no file the runtime could read is unlisted. Every refusal names the
bundle, the file or field, and what to do. No pickle is read here. Never imports torch.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, NoReturn

import edge_ad

__all__ = ["BundleError", "Bundle", "DiskFullError", "FORMAT_VERSION", "READ_FORMATS", "add_file", "bundle_format",
           "check_calibration", "check_name", "check_writable", "disk_full_error", "is_disk_full", "read_bundle", "replace_calibration", "validate_meta", "write_bundle"]

FORMAT_VERSION = 2                # the newest bundle format this edge_ad writes
READ_FORMATS = (1, 2)             # 1: geometry.fit is "crop" (absent); 2: geometry.fit may be "squash"/"letterbox"
META = "meta.json"
MAX_FILE_BYTES = 4 << 30          # no model file of ours comes near 4 GiB
MAX_META_BYTES = 1 << 20
MAX_SIDE = 16384                  # input, resize and crop sides, pixels
MAX_OUTPUT_SIDE = 8192            # heat-map output sides: a float32 map of 8192 x 8192 is 256 MiB
MAX_ELEMENTS = 1 << 24            # one image's raw map, latent or extra graph input
MAX_BATCH = 4096
MAX_SIGMA = 128.0                 # the kernels' longest filter: 1025 taps = 2 * int(4 * sigma + 0.5) + 1
MAX_WINDOW = 1024                 # box smoothing window, pixels (within the same 1025 taps)
MIN_MODEL_SIDE, MAX_MODEL_SIDE = 16, 4096   # config.image_size and resize_size, pixels
MAX_RESIZE_RATIO = 4              # geometry.resize at most 4x the crop (every frame is resized to it)
MAX_CONFIG_INT = 1 << 16          # any other whole number in config (widths, layers, steps); seeds excepted
VERSIONS, CURRENT, LOCK, LOCK_FILE = ".versions", ".current", ".meta.lock", ".lock"
VERSION_GRACE_S = 60.0            # a replaced version stays this long for readers that opened it
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
GRAPH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.onnx")
ENGINE = re.compile(r"engines/[A-Za-z0-9_][A-Za-z0-9_.+-]{0,240}\.engine")
_PARTIAL = re.compile(r"\..+\.partial")                   # add_file's temporaries, never read
_DDIM_PARTS = ("encoder", "denoiser", "decoder", "segmentation")
_REEXPORT = "re-export the bundle with `edge-ad export RUN --out BUNDLE` (meta.json was edited or damaged)"
_RECALIBRATE = ("the run's calibration is broken: calibrate it again (retrain, or rerun calibration on good "
                "images) and re-export")
_READ_ATTEMPTS = 3
MAX_HISTORY = 100                 # calibration_history keeps the newest this many replaced calibrations
CALIBRATION_METHODS = ("training", "mean+3std", "target-fpr", "target-recall", "f1-max")   # this version's
_METHOD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")          # any version's method names
MAX_TILES_SIDE = 16               # calibration.view.tiles: rows and columns (edge_ad.regions' limit)
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)?")


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message names the file and the fix."""


class DiskFullError(OSError):
    """A write that failed for lack of space (ENOSPC/EDQUOT); the message names the folder and what was kept."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_WRITE_FAILED = re.compile(r"fail\w* (to )?writ|writ\w* fail", re.IGNORECASE)   # torch's C++ writer: no errno
_NEARLY_FULL = 16 << 20


def is_disk_full(err: BaseException, folder: str | Path | None = None) -> bool:
    """True when `err`, or an error it wraps, is a full disk: an OSError with ENOSPC or EDQUOT, a library
    error whose text is that OSError's ("No space left on device"), or (torch's zip writer says only
    "file write failed") a failed write while `folder` has less than 16 MiB free."""
    texts = tuple(os.strerror(code) for code in _DISK_FULL)
    seen: set[int] = set()
    write_failed = False
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return True
        text = str(err)
        if any(t in text for t in texts):
            return True
        write_failed = write_failed or bool(_WRITE_FAILED.search(text))
        err = err.__cause__ or err.__context__
    if write_failed and folder is not None:
        try:
            return shutil.disk_usage(folder).free < _NEARLY_FULL
        except OSError:
            return False
    return False


def disk_full_error(err: BaseException, folder: Path, what: str, kept: str) -> DiskFullError:
    """The DiskFullError for `err`: "no space left on FOLDER while WHAT (N MB free); KEPT. Free some space..."
    FOLDER is where the failed write was (never a temporary's name): the folder of the file the error
    names when that lies elsewhere, else `folder`."""
    where = Path(folder).resolve()
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        name = getattr(err, "filename", None)
        if isinstance(name, (str, bytes, os.PathLike)):
            file = Path(os.fsdecode(name)).resolve()
            if where != file.parent and where not in file.parents:
                where = file.parent
            break
        err = err.__cause__ or err.__context__
    try:
        free = f"{shutil.disk_usage(where).free / 2**20:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on {where} while {what} ({free}); {kept}. Free some space "
                                       "there, then run the command again")


@dataclass(frozen=True)
class Bundle:
    """A bundle as read: `path` as the caller named it, `root` the directory its files come from
    (the version current when it was read, resolved once, so a later overwrite cannot mix files)."""

    path: Path
    meta: dict
    root: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.root is None:
            object.__setattr__(self, "root", Path(self.path).resolve())

    def file(self, name: str) -> Path:
        """Path of a listed bundle file, checked to stay inside the bundle."""
        return _inside(self.root, name)

    @property
    def model_name(self) -> str:
        return self.meta["model"]


# ------------------------------------------------------------------------------------------ writing


def write_bundle(out: str | Path, meta: dict, fill: Callable[[Path], None], *, overwrite: bool = False) -> Bundle:
    """Create bundle `out` (or, with `overwrite`, a new version of it): `fill(tmp_dir)` writes the
    files, then checksums and meta.json are added, the whole meta is validated, and the version is
    made current in one atomic step. An exception anywhere leaves `out` as it was."""
    out = Path(out)
    if not out.name or out.name in (".", ".."):
        raise BundleError(f"--out {str(out)!r} names no folder; give a bundle folder such as bundles/cat")
    out.parent.mkdir(parents=True, exist_ok=True)
    legacy = _preflight(out, overwrite)
    existed = os.path.lexists(out)                                   # then this is an overwrite
    before = _current_target(out)
    try:
        with _export_lock(out) if existed else nullcontext():
            _clean_stale(out)
            work, held = _make_partial(out)
            try:
                content = work / "content"
                content.mkdir()
                fill(content)
                full = _seal(content, meta, out)
                if existed:
                    root = _commit_version(out, content, legacy)
                else:
                    root = _commit_new(out, work, content, overwrite)
            finally:
                shutil.rmtree(work, ignore_errors=True)          # the temporary goes, whatever happened
                os.close(held)
    except Exception as err:                                          # a Ctrl-C stays a Ctrl-C
        if not is_disk_full(err, out.parent):
            raise
        raise disk_full_error(err, out.parent, f"exporting the bundle {out}", _what_was_kept(out, existed, before)) \
            from err
    return Bundle(out, full, root)


def _current_target(out: Path) -> str | None:
    """Where `out/.current` points (the committed version), None for a plain or missing bundle."""
    try:
        return os.readlink(out / CURRENT)
    except OSError:
        return None


def _what_was_kept(out: Path, existed: bool, before: str | None) -> str:
    """After a failed export: what is on disk now, said truthfully (the commit may have happened)."""
    if not existed:
        return f"nothing was written (no {out.name} and no temporary left)" if not os.path.lexists(out) else \
            f"{out} was committed, but its top-level links may be incomplete: export again with --overwrite"
    if _current_target(out) == before:
        return f"the previous bundle {out} is kept unchanged and the temporary was removed"
    return (f"the new version of {out} was committed but its top-level links may be incomplete: export again "
            "with --overwrite")


def _preflight(out: Path, overwrite: bool) -> set[str] | None:
    """Refuse an `out` we may not replace; for a plain-directory bundle, the files its meta.json
    lists (ours to replace), else None."""
    if not os.path.lexists(out):
        return None
    if not overwrite:
        raise BundleError(f"{out} already exists; choose another --out or pass --overwrite")
    if not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder; refusing to replace it: choose another --out")
    meta = out / META
    if not os.path.lexists(meta):
        if any(out.iterdir()):
            raise BundleError(f"{out} exists and is not a bundle (no {META}); refusing to overwrite a folder "
                              "edge_ad did not write: choose another --out or empty it")
        return set()
    if meta.is_symlink():
        return None
    try:
        listed = json.loads(meta.read_text()).get("files", {})
        return {name for name in listed if isinstance(name, str)} if isinstance(listed, dict) else set()
    except (ValueError, OSError, AttributeError, RecursionError):
        return set()


def _seal(content: Path, meta: dict, out: Path) -> dict:
    """Checksum every file `fill` wrote, write meta.json, validate it as a reader would, fsync."""
    files = {}
    for path in sorted(p for p in content.rglob("*") if p.is_file()):
        rel = path.relative_to(content).as_posix()
        files[rel] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    full = {"format_version": bundle_format(meta), "edge_ad_version": edge_ad.__version__, **meta, "files": files}
    full = json.loads(json.dumps(full))              # validated as a reader will see it (tuples become lists)
    validate_meta(full, str(out))
    full = _strict_json(full)
    with _open_for_write(content / META) as f:
        f.write((json.dumps(full, indent=2, allow_nan=False) + "\n").encode("utf-8"))
    _fsync_tree(content)
    return full


def bundle_format(meta: dict) -> int:
    """The format a bundle is written in: 1 while a reader of format 1 reads it right (geometry "crop"),
    2 when it needs a reader that knows geometry.fit: a runtime that reads only format 1 ignores `fit`
    and would crop a letterboxed or squashed model's frames, so it must refuse the bundle instead."""
    geometry = meta.get("geometry") if isinstance(meta.get("geometry"), dict) else {}
    return 1 if geometry.get("fit", "crop") == "crop" else FORMAT_VERSION


def _open_for_write(path: Path) -> BinaryIO:
    """The write layer of the files this module writes itself (meta.json, added engines): a plain
    buffered file; tests replace it to simulate a full disk."""
    return open(path, "wb")


def _commit_new(out: Path, work: Path, content: Path, overwrite: bool) -> Path:
    """First export: build the whole layout inside the temporary folder (its lock file becomes the
    bundle's) and rename it to `out`. When another export created `out` meanwhile, this one becomes
    its next version (`overwrite`) or is refused."""
    (work / VERSIONS).mkdir()
    first = work / VERSIONS / "v1"
    os.rename(content, first)
    names = _top_names(first)
    os.symlink(f"{VERSIONS}/v1", work / CURRENT)
    for name in names:
        os.symlink(f"{CURRENT}/{name}", work / name)
    _fsync_dir(work)
    try:
        if os.path.lexists(out):
            raise FileExistsError(errno.EEXIST, "exists", str(out))
        os.rename(work, out)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        if not overwrite:
            raise BundleError(f"{out} was created by another export while this one ran; choose another --out or "
                              "pass --overwrite") from None
        with _export_lock(out, wait_s=30.0):              # the winner is finishing: let it
            return _commit_version(out, first, _preflight(out, True))
    _fsync_dir(out.parent)
    return (out / VERSIONS / "v1").resolve()


def _commit_version(out: Path, content: Path, legacy: set[str] | None) -> Path:
    """Overwrite: the content becomes the next version, `.current` is swapped to it (the commit),
    then the top-level links follow and versions older than the previous one are removed."""
    names = _top_names(content)
    _refuse_foreign_collisions(out, names, legacy)
    versions = out / VERSIONS
    versions.mkdir(exist_ok=True)
    previous = os.readlink(out / CURRENT) if (out / CURRENT).is_symlink() else None
    number = 1 + max([int(p.name[1:]) for p in versions.iterdir() if re.fullmatch(r"v\d{1,9}", p.name)] or [0])
    version = versions / f"v{number}"
    os.rename(content, version)
    _fsync_dir(versions)
    _swap_link(out / CURRENT, f"{VERSIONS}/{version.name}")          # the commit for versioned readers
    _swap_link(out / META, f"{CURRENT}/{META}")                      # the commit for plain-directory readers
    for name in names:
        _link_top(out, name, legacy)
    _drop_old_top(out, names, legacy)
    _prune(versions, keep={version.name, Path(previous).name if previous else ""})
    _fsync_dir(out)
    return version.resolve()


def _prune(versions: Path, keep: set[str]) -> None:
    """Remove the versions other than `keep` (the current and the previous one) that were replaced
    more than VERSION_GRACE_S ago (younger ones a reader may still be loading), and temporaries."""
    numbered = sorted((int(p.name[1:]), p) for p in versions.iterdir() if re.fullmatch(r"v\d{1,9}", p.name))
    now = time.time()
    for (_, entry), (_, successor) in zip(numbered, numbered[1:]):
        replaced_at = successor.stat().st_mtime
        if entry.name not in keep and now - replaced_at > VERSION_GRACE_S:
            _remove(entry)
    for entry in versions.iterdir():
        if _PARTIAL.fullmatch(entry.name):
            _remove(entry)


def _top_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (VERSIONS, CURRENT, LOCK_FILE))


def _refuse_foreign_collisions(out: Path, names: list[str], legacy: set[str] | None) -> None:
    """A plain folder in the way of a new link may hold only files the old meta.json listed."""
    for name in names:
        entry = out / name
        if entry.is_dir() and not entry.is_symlink():
            foreign = [p for p in entry.rglob("*") if p.is_file() and not _ours(p.relative_to(out).as_posix(), legacy)]
            if foreign:
                raise BundleError(f"{entry} holds files the bundle does not list ({foreign[0].name}, ...); refusing "
                                  "to replace them: move them away and export again")


def _ours(rel: str, legacy: set[str] | None) -> bool:
    return rel in (legacy or set()) or rel.split("/")[-1] == LOCK or bool(_PARTIAL.fullmatch(rel.split("/")[-1]))


def _link_top(out: Path, name: str, legacy: set[str] | None) -> None:
    """`out/name` -> `.current/name` (replacing an old plain file or folder of the bundle)."""
    entry, target = out / name, f"{CURRENT}/{name}"
    if entry.is_symlink() and os.readlink(entry) == target:
        return
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)                         # checked by _refuse_foreign_collisions: listed files only
    _swap_link(entry, target)


def _drop_old_top(out: Path, names: list[str], legacy: set[str] | None) -> None:
    """Remove top-level entries of an older version that the new one lacks: our links, and the
    files a plain-directory bundle listed. Anything else is left alone."""
    for entry in list(out.iterdir()):
        name = entry.name
        if name in names or name in (VERSIONS, CURRENT, LOCK_FILE):
            continue
        if entry.is_symlink() and (os.readlink(entry).startswith(f"{CURRENT}/") or _PARTIAL.fullmatch(name)):
            entry.unlink()
        elif entry.is_file() and _ours(name, legacy) and legacy is not None:
            entry.unlink()
        elif entry.is_dir() and legacy and all(_ours(p.relative_to(out).as_posix(), legacy)
                                               for p in entry.rglob("*") if p.is_file()):
            shutil.rmtree(entry)


def _swap_link(link: Path, target: str) -> None:
    """Point `link` at `target` atomically (a new symlink renamed over the old entry)."""
    tmp = link.with_name(f".{link.name}.{os.urandom(4).hex()}.link.partial")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def _export_lock(out: Path, wait_s: float = 0.0, busy: str | None = None) -> Iterator[None]:
    """One export (or calibration) of an existing bundle at a time: its lock file `out/.lock`, released
    by the OS if the writer dies; a second one gets a clear error (at once, or after `wait_s`): `busy`,
    or the exporter's."""
    deadline = time.monotonic() + wait_s
    while (fd := _lock(out / LOCK_FILE)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if fd is None:
        raise BundleError(busy or f"another export is writing {out} right now; wait for it to finish, or choose "
                                  "another --out")
    try:
        yield
    finally:
        os.close(fd)


def _lock(path: Path) -> int | None:
    """An exclusive flock on `path` (created if missing): its descriptor, or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _clean_stale(out: Path) -> None:
    """Remove what killed exports of `out` left: its temporaries (our naming only) whose lock no live
    exporter holds, and the `.out.old` of the earlier two-step overwrite once `out` is a bundle again."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.partial")
    starting = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.starting-([0-9]+)")
    for entry in out.parent.iterdir():
        if pattern.fullmatch(entry.name) and _abandoned(entry):
            _remove(entry)
        elif (found := starting.fullmatch(entry.name)) and not _process_alive(int(found.group(1))):
            _remove(entry)                  # its exporter died before the temporary was renamed
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not old.is_symlink() and (out / META).is_file() and (old / META).is_file():
        shutil.rmtree(old, ignore_errors=True)


def _abandoned(work: Path) -> bool:
    """A temporary whose exporter is gone: its lock is free, or it never got one and is a minute old."""
    if not work.is_dir() or work.is_symlink():
        return True
    if not os.path.lexists(work / LOCK_FILE):
        return time.time() - work.stat().st_mtime > 60.0
    fd = _lock(work / LOCK_FILE)
    if fd is None:
        return False
    os.close(fd)
    return True


def _make_partial(out: Path) -> tuple[Path, int]:
    """A temporary sibling of `out` with the permissions the umask gives (mkdtemp makes 0700), and
    the descriptor of the lock this exporter holds on it (it marks the temporary as alive)."""
    # Created as `.starting-<pid>` and locked before it is renamed to `.partial`: a cleaner never sees
    # a `.partial` unlocked, and judges a `.starting` by whether its process still lives.
    starting = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=f".starting-{os.getpid()}", dir=out.parent))
    fd = _lock(starting / LOCK_FILE)
    if fd is None:                          # nobody else may lock a live process's .starting
        raise BundleError(f"{starting} is locked by another process; remove it and export again")
    work = starting.with_name(starting.name.rsplit(".", 1)[0] + ".partial")
    os.chmod(starting, 0o777 & ~current_umask())
    os.rename(starting, work)
    return work, fd


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ reading


def read_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Open and validate a bundle directory. When an overwrite swaps the bundle while it is being
    read, the new one is read again (a few times at most); a real defect is reported at once."""
    path = Path(path)
    for attempt in range(_READ_ATTEMPTS):
        root, stamp = _locate(path)
        try:
            return _read(path, root, verify)
        except (BundleError, OSError):
            if attempt + 1 == _READ_ATTEMPTS or _changed(path, root, stamp) is False:
                raise
    raise AssertionError("unreachable")


def _locate(path: Path) -> tuple[Path, tuple[int, int]]:
    """The directory the bundle's files are read from (where meta.json really is), and meta.json's
    identity, to notice a swap. A meta.json that resolves outside the bundle is refused."""
    if not path.is_dir():
        raise BundleError(f"bundle not found: {path} (export one with `edge-ad export RUN --out BUNDLE`)")
    meta = path / META
    if not os.path.lexists(meta):
        raise BundleError(f"{path} is not a bundle: {META} is missing (was the export interrupted?)")
    try:
        real, base = meta.resolve(strict=True), path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise BundleError(f"{meta} is a dangling or looping link; copy the whole bundle directory again (cp -a) "
                          "or re-export it") from None
    if base not in real.parents:
        raise BundleError(f"{meta} is a link to {real}, outside the bundle directory; refusing it: copy the "
                          "bundle with its files (cp -a) or re-export it")
    if not real.is_file():
        raise BundleError(f"{meta} is not a regular file (a dangling link?); copy the whole bundle directory "
                          "again (cp -a) or re-export it")
    info = real.stat()
    return real.parent, (info.st_ino, info.st_mtime_ns)


def _changed(path: Path, root: Path, stamp: tuple[int, int]) -> bool | None:
    """Whether meta.json now resolves elsewhere than (root, stamp): None when it cannot be told."""
    try:
        return _locate(path) != (root, stamp)
    except (BundleError, OSError):
        return None


def _read(path: Path, root: Path, verify: bool) -> Bundle:
    meta_path = root / META
    where = str(path)
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise BundleError(f"{path / META} is over {MAX_META_BYTES} bytes; not a bundle of ours")
    meta = _parse_meta(meta_path, path)
    _check_format(meta, path)
    validate_meta(meta, where)
    bundle = Bundle(path, meta, root)
    for name, info in meta["files"].items():
        _check_file(bundle, name, info, verify)
    _refuse_unlisted(bundle)
    return bundle


def _check_format(meta: dict, path: Path) -> None:
    """Refuse a format this reader does not know: a newer one asks for a newer edge_ad (or a re-export
    with this one), any other for a re-export."""
    version = meta.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version in READ_FORMATS:
        return
    made_by = str(meta.get("edge_ad_version", "an unknown version"))[:40]
    known = ", ".join(map(str, READ_FORMATS))
    newer = isinstance(version, int) and not isinstance(version, bool) and version > max(READ_FORMATS)
    fix = (f"upgrade edge_ad on this device (pip install -U edge-ad), or re-export the bundle with edge_ad "
           f"{edge_ad.__version__}" if newer else f"re-export it with edge_ad {edge_ad.__version__}")
    shown = version if isinstance(version, int) else repr(str(version)[:20])
    raise BundleError(f"{path} has bundle format {shown} (made by edge_ad {made_by!r}); this edge_ad "
                      f"{edge_ad.__version__} reads formats {known}: {fix}")


def _parse_meta(meta_path: Path, path: Path) -> dict:
    """meta.json as a JSON object; invalid UTF-8, huge numbers and absurd nesting are refused. NaN and
    Infinity (older bundles wrote them in `metrics`) parse, and the schema refuses them where they matter."""
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise BundleError(f"{path / META} is not valid JSON ({str(err)[:200]}); {_REEXPORT}") from None
    if not isinstance(meta, dict):
        raise BundleError(f"{path / META} is not a JSON object; {_REEXPORT}")
    return meta


def _check_file(bundle: Bundle, name: str, info: dict, verify: bool) -> None:
    file = bundle.file(name)
    if not file.is_file():
        raise BundleError(f"{file} is listed in {META} but missing; copy the whole bundle directory")
    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise BundleError(f"{file} has {size} bytes, over the {MAX_FILE_BYTES}-byte limit of a bundle file; "
                          "refusing it (no model file of edge_ad comes near it)")
    if size != info["bytes"]:
        raise BundleError(f"{file} has {size} bytes, {META} says {info['bytes']}; the copy is "
                          "incomplete or the file was replaced")
    if verify and _sha256(file) != info["sha256"]:
        raise BundleError(f"checksum mismatch for {file}: the file is corrupt or was modified; "
                          "copy the bundle again or re-export it")


_READ_BY_NAME = ("model.onnx", "checkpoint.pt", "parity.json")     # opened by name when present


def _refuse_unlisted(bundle: Bundle) -> None:
    """Files a runtime or the exporter would read must be listed (and so size- and checksum-checked):
    the fixed names they open when present, and the external data files each ONNX graph names."""
    listed = bundle.meta["files"]
    for name in _READ_BY_NAME:
        if name not in listed and os.path.lexists(bundle.root / name):
            _unlisted(bundle, name, "edge_ad opens it by name")
    for graph in [n for n in listed if n.endswith(".onnx")]:
        for location in _external_data(bundle.file(graph)):
            if not _relative(location):
                raise BundleError(f"{bundle.path}: {graph} reads external data from {location!r}, outside the bundle "
                                  "directory; refusing it: re-export the bundle")
            rel = (Path(graph).parent / location).as_posix()
            if rel not in listed:
                _unlisted(bundle, rel, f"{graph} reads it as external data")


def _unlisted(bundle: Bundle, name: str, why: str) -> NoReturn:
    raise BundleError(f"{bundle.path}: {name} is not listed in {META}'s files, so no checksum covers it, yet {why}; "
                      "re-export the bundle (or remove the file if it does not belong)")


def _external_data(graph: Path) -> set[str]:
    """The external data locations an ONNX file names. A graph whose bytes do not contain the key
    `location` as protobuf writes it (field 1, length 8) names none (read at memchr speed); the others are
    parsed without their data, with the `onnx` package (not in a runtime-only install: then a BundleError
    says to install it; edge_ad's exporter writes external data only for graphs over 2 GB)."""
    import mmap

    with open(graph, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return set()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(b"\x0a\x08location") < 0:
                return set()
    try:
        import onnx
    except ImportError:
        raise BundleError(f"{graph} may keep its weights in separate files, and checking where they point needs the "
                          "onnx package, which this runtime-only install lacks: pip install onnx") from None

    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors
        raise BundleError(f"{graph} is not a readable ONNX file ({str(err)[:200]}); copy the bundle again or "
                          "re-export it") from None
    return {entry.value for tensor in _tensors(model.graph) for entry in tensor.external_data if entry.key == "location"}


def _tensors(graph) -> Iterator:
    """Every tensor of an ONNX graph and its subgraphs: initializers, sparse ones, attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for sub in attribute.graphs:
                yield from _tensors(sub)


# --------------------------------------------------------------------------------------- the schema


class _Schema:
    """Field checks that raise a BundleError naming the bundle, the field and the fix."""

    def __init__(self, where: str, doc: str = META) -> None:
        self.where, self.doc = where, doc

    def fail(self, field_name: str, problem: str, fix: str = _REEXPORT) -> NoReturn:
        raise BundleError(f"{self.where}: {self.doc} field {field_name} {problem}; {fix}")

    def obj(self, value: Any, name: str, *, optional: bool = False) -> dict:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(name, f"must be a JSON object, got {_show(value)}")
        return value

    def integer(self, value: Any, name: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(name, f"must be an integer in {lo}..{hi}, got {_show(value)}")
        return value

    def number(self, value: Any, name: str, lo: float = -math.inf, hi: float = math.inf,
               fix: str = _REEXPORT) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(name, f"must be a number, got {_show(value)}", fix)
        if not math.isfinite(value):
            self.fail(name, f"is {value} (not a finite number)", fix)
        if not lo <= value <= hi:
            self.fail(name, f"must be in {lo}..{hi}, got {value}", fix)
        return float(value)

    def choice(self, value: Any, name: str, options: tuple) -> Any:
        if value not in options or isinstance(value, bool) != any(isinstance(o, bool) for o in options):
            self.fail(name, f"must be one of {', '.join(map(repr, options))}, got {_show(value)}")
        return value

    def text(self, value: Any, name: str, pattern: re.Pattern, what: str) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
            self.fail(name, f"must be {what}, got {_show(value)}")
        return value

    def sides(self, value: Any, name: str, hi: int) -> tuple[int, int]:
        if not isinstance(value, list) or len(value) != 2:
            self.fail(name, f"must be [height, width], got {_show(value)}")
        return self.integer(value[0], f"{name}[0]", 1, hi), self.integer(value[1], f"{name}[1]", 1, hi)

    def shape(self, value: Any, name: str, *, batch: bool) -> list[int]:
        """A list of positive sides (after a leading "batch" when `batch`) of at most MAX_ELEMENTS."""
        if not isinstance(value, list) or not 1 + batch <= len(value) <= 6:
            self.fail(name, f"must be a list of 1 to 5 sides, got {_show(value)}")
        if batch and value[0] != "batch":
            self.fail(f"{name}[0]", f"must be \"batch\", got {_show(value[0])}")
        sides = [self.integer(v, f"{name}[{i}]", 1, 1 << 20) for i, v in enumerate(value) if i >= batch]
        if math.prod(sides) > MAX_ELEMENTS:
            self.fail(name, f"has {math.prod(sides)} elements per image, over the limit of {MAX_ELEMENTS}")
        return sides


_IDENT = "a plain name (letters, digits, '_', '.', '-'; at most 64 characters)"


def check_name(value: Any, field_name: str, where: str) -> str:
    """A name from meta.json that becomes a file or folder name, a tensor name or a Triton model
    name: a plain identifier (not '.', '..', no '/', quotes or newlines), else a BundleError."""
    return _Schema(where).text(value, field_name, NAME, _IDENT)


def check_calibration(calibration: Any, where: str, doc: str = META, name: str = "calibration") -> None:
    """Finite thresholds and norms with lo < hi: a NaN threshold would flag nothing, a lo == hi
    norm divides by zero. Used at export (`doc` "run.json") and at load, and (`name`) for each entry
    of calibration_history. The fields `edge-ad calibrate` adds are optional (older bundles lack them)."""
    s = _Schema(where, doc)
    cal = s.obj(calibration, name)
    for key in ("image_threshold", "pixel_threshold"):
        s.number(cal.get(key), f"{name}.{key}", fix=_RECALIBRATE)
    for key in ("image_norm", "pixel_norm"):
        pair = cal.get(key)
        if not isinstance(pair, list) or len(pair) != 2:
            s.fail(f"{name}.{key}", f"must be [lo, hi], got {_show(pair)}", _RECALIBRATE)
        lo = s.number(pair[0], f"{name}.{key}[0]", fix=_RECALIBRATE)
        hi = s.number(pair[1], f"{name}.{key}[1]", fix=_RECALIBRATE)
        if not lo < hi:
            s.fail(f"{name}.{key}", f"must have lo < hi, got [{lo}, {hi}]", _RECALIBRATE)
    if "normal_images" in cal:
        s.integer(cal["normal_images"], f"{name}.normal_images", 0, 1 << 40)
    _check_provenance(s, cal, name)


def _check_provenance(s: _Schema, cal: dict, name: str) -> None:
    """How a calibration was made, as `edge-ad calibrate` records it: method, target, image counts,
    backend, when it was made (and replaced), the view and the operating point it reached on its
    images. The runtime decides nothing by these, so only their types are checked: a method or an
    operating-point figure a later version adds must not make this runtime refuse the bundle."""
    if "method" in cal:
        s.text(cal["method"], f"{name}.method", _METHOD, "a method name such as " + ", ".join(CALIBRATION_METHODS))
    if cal.get("target") is not None:
        s.number(cal["target"], f"{name}.target", 0.0, 1.0)
    for key in ("good_images", "bad_images"):
        if key in cal:
            s.integer(cal[key], f"{name}.{key}", 0, 1 << 40)
    for key in ("calibrated_at", "replaced_at"):
        if cal.get(key) is not None:
            s.text(cal[key], f"{name}.{key}", _STAMP, "a time such as 2025-01-31T12:00:00+00:00")
    if "backend" in cal:
        s.text(cal["backend"], f"{name}.backend", NAME, _IDENT)
    if "operating_point" in cal:
        point = s.obj(cal["operating_point"], f"{name}.operating_point")
        for key, value in point.items():
            if value is not None:
                s.number(value, f"{name}.operating_point.{str(key)[:64]}")
    if cal.get("view") is not None:
        _check_view(s, s.obj(cal["view"], f"{name}.view"), f"{name}.view")


def _check_view(s: _Schema, view: dict, name: str) -> None:
    """calibration.view, the view the threshold was set with (edge_ad.runtime.calibrated_view): roi
    [x, y, w, h] or null, tiles [rows, cols] or null, overlap a fraction or null."""
    roi = view.get("roi")
    if roi is not None:
        if not isinstance(roi, list) or len(roi) != 4:
            s.fail(f"{name}.roi", f"must be [x, y, w, h] or null, got {_show(roi)}")
        for i, value in enumerate(roi):
            s.integer(value, f"{name}.roi[{i}]", 1 if i >= 2 else 0, 1 << 20)
    tiles = view.get("tiles")
    if tiles is not None:
        if not isinstance(tiles, list) or len(tiles) != 2:
            s.fail(f"{name}.tiles", f"must be [rows, cols] or null, got {_show(tiles)}")
        for i, value in enumerate(tiles):
            s.integer(value, f"{name}.tiles[{i}]", 1, MAX_TILES_SIDE)
    if view.get("overlap") is not None:
        s.number(view["overlap"], f"{name}.overlap", 0.0, 1.0)


def _check_history(s: _Schema, history: Any) -> None:
    """calibration_history: the calibrations `edge-ad calibrate` replaced, oldest first (absent in
    bundles never recalibrated)."""
    if history is None:
        return
    if not isinstance(history, list) or len(history) > MAX_HISTORY:
        s.fail("calibration_history", f"must be a list of at most {MAX_HISTORY} calibrations, got {_show(history)}")
    for i, entry in enumerate(history):
        check_calibration(entry, s.where, s.doc, f"calibration_history[{i}]")


def validate_meta(meta: Any, where: str) -> None:
    """The schema of meta.json, checked before any file is touched: every field a runtime uses has
    the right type, a sane range and finite values, names that become paths are plain, the geometry
    agrees with the input, and every file a runtime would read is listed with a checksum."""
    s = _Schema(where)
    meta = s.obj(meta, "(the whole file)")
    check_name(meta.get("model"), "model", where)
    config = s.obj(meta.get("config", {}), "config")
    if not isinstance(meta.get("edge_ad_version", ""), str):
        s.fail("edge_ad_version", f"must be a string, got {_show(meta.get('edge_ad_version'))}")
    _check_input_and_geometry(s, meta)
    _check_config(s, config, meta)
    _check_outputs(s, meta.get("outputs"))
    _check_heatmap(s, s.obj(meta.get("heatmap"), "heatmap"))
    check_calibration(meta.get("calibration"), where)
    _check_history(s, meta.get("calibration_history"))
    files = _check_files(s, meta.get("files"))
    _check_graphs(s, meta, files)
    _check_engines(s, meta, files)
    _check_graph_inputs(s, s.obj(meta.get("graph_inputs"), "graph_inputs", optional=True))


def _check_input_and_geometry(s: _Schema, meta: dict) -> None:
    inp = s.obj(meta.get("input"), "input")
    check_name(inp.get("name"), "input.name", s.where)
    s.choice(inp.get("dtype"), "input.dtype", ("uint8",))
    s.choice(inp.get("layout"), "input.layout", ("NHWC",))
    s.choice(inp.get("color"), "input.color", ("RGB",))
    height = s.integer(inp.get("height"), "input.height", 1, MAX_SIDE)
    width = s.integer(inp.get("width"), "input.width", 1, MAX_SIDE)
    geometry = s.obj(meta.get("geometry"), "geometry")
    resize = s.sides(geometry.get("resize"), "geometry.resize", MAX_SIDE)
    crop = s.sides(geometry.get("crop"), "geometry.crop", MAX_SIDE)
    s.choice(geometry.get("fit", "crop"), "geometry.fit", ("squash", "letterbox", "crop"))   # none: "crop" (older)
    if crop[0] > resize[0] or crop[1] > resize[1]:
        s.fail("geometry.crop", f"{list(crop)} must fit inside geometry.resize {list(resize)}")
    if resize[0] > MAX_RESIZE_RATIO * crop[0] or resize[1] > MAX_RESIZE_RATIO * crop[1]:
        s.fail("geometry.resize", f"{list(resize)} is over {MAX_RESIZE_RATIO} times the crop {list(crop)}: every frame "
               "would be resized to that size first (memory per frame) for a crop of a small part of it")
    if crop != (height, width):
        s.fail("geometry.crop", f"{list(crop)} differs from the graph's input {height}x{width} (input.height, "
               "input.width)")


def _check_config(s: _Schema, config: dict, meta: dict) -> None:
    """The model's construction arguments (the torch backend builds the model from them): plain JSON
    values of bounded size, and the sizes the model allocates for agree with the graph's geometry, so
    a tampered image_size cannot make a loader allocate huge tensors."""
    _check_config_value(s, config, "config", 0)
    for key, other in (("image_size", "input"), ("resize_size", "geometry.resize")):
        if key not in config:
            continue
        side = s.integer(config[key], f"config.{key}", MIN_MODEL_SIDE, MAX_MODEL_SIDE)
        if key == "image_size":
            want = (meta["input"]["height"], meta["input"]["width"])
        else:
            want = tuple(meta["geometry"]["resize"])
        if (side, side) != want:
            s.fail(f"config.{key}", f"is {side}, but the bundle's {other} is {want[0]}x{want[1]}: the model would not "
                   "be the graph's")


def _check_config_value(s: _Schema, value: Any, name: str, depth: int) -> None:
    """Numbers finite and bounded (seeds excepted), strings short, lists and objects small and shallow."""
    if depth > 4:
        s.fail(name, "is nested too deeply for a model argument")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        low, high = (0, 2**63 - 1) if name.endswith("seed") else (-MAX_CONFIG_INT, MAX_CONFIG_INT)
        s.integer(value, name, low, high)
    elif isinstance(value, float):
        s.number(value, name, -1e12, 1e12)
    elif isinstance(value, str):
        if len(value) > 256 or not value.isprintable():
            s.fail(name, f"must be a short printable string, got {_show(value)}")
    elif isinstance(value, list):
        if len(value) > 64:
            s.fail(name, f"has {len(value)} items, over 64")
        for i, item in enumerate(value):
            _check_config_value(s, item, f"{name}[{i}]", depth + 1)
    elif isinstance(value, dict):
        if len(value) > 256:
            s.fail(name, f"has {len(value)} keys, over 256")
        for key, item in value.items():
            _check_config_value(s, item, f"{name}.{key}", depth + 1)
    else:
        s.fail(name, f"must be a JSON value, got {_show(value)}")


def _check_outputs(s: _Schema, outputs: Any) -> None:
    if not isinstance(outputs, list) or not 1 <= len(outputs) <= 16:
        s.fail("outputs", f"must be a list of 1 to 16 outputs, got {_show(outputs)}")
    for i, out in enumerate(outputs):
        out = s.obj(out, f"outputs[{i}]")
        check_name(out.get("name"), f"outputs[{i}].name", s.where)
        s.choice(out.get("dtype"), f"outputs[{i}].dtype", ("float32", "float16"))
        s.shape(out.get("shape"), f"outputs[{i}].shape", batch=True)


def _check_heatmap(s: _Schema, spec: dict) -> None:
    for key in ("output_size", "smooth", "sigma", "window", "align_corners", "score_from"):
        if key not in spec:
            s.fail(f"heatmap.{key}", "is missing")
    s.sides(spec.get("output_size"), "heatmap.output_size", MAX_OUTPUT_SIDE)
    smooth = s.choice(spec.get("smooth"), "heatmap.smooth", ("gaussian", "box", "none"))
    sigma = s.number(spec.get("sigma"), "heatmap.sigma", 0.0, MAX_SIGMA)
    if smooth == "gaussian" and not sigma > 0:       # the kernels refuse it: every frame would fail
        s.fail("heatmap.sigma", f"must be > 0 for gaussian smoothing, got {sigma}")
    if spec.get("window") is not None or smooth == "box":
        s.integer(spec.get("window"), "heatmap.window", 1, MAX_WINDOW)
    s.choice(spec.get("align_corners"), "heatmap.align_corners", (False, True))
    s.choice(spec.get("score_from"), "heatmap.score_from", ("smoothed", "raw"))


def _check_files(s: _Schema, files: Any) -> dict:
    if not isinstance(files, dict) or not files:
        s.fail("files", "is missing or empty: no checksum covers the model files (a bundle from a damaged or "
               "hand-made export)")
    for name, info in files.items():
        if not _relative(name):
            raise BundleError(f"{s.where}: bundle file name {name!r} points outside the bundle directory (meta.json "
                              f"field files); refusing it: {_REEXPORT}")
        info = s.obj(info, f"files[{name!r}]")
        s.text(info.get("sha256"), f"files[{name!r}].sha256", re.compile(r"[0-9a-f]{64}"), "a sha256 hex digest")
        s.integer(info.get("bytes"), f"files[{name!r}].bytes", 0, 1 << 62)
    return files


def _relative(name: str) -> bool:
    """A relative POSIX path with no '..', empty or '.' parts, backslashes or control characters."""
    parts = name.split("/")
    return (bool(name) and not name.startswith("/") and "\\" not in name and name.isprintable()
            and all(p not in ("", ".", "..") for p in parts))


def _check_graphs(s: _Schema, meta: dict, files: dict) -> None:
    """The graphs a runtime opens (model.onnx or the pipeline's, and their FP16 twins) are plain
    file names and listed."""
    pipeline = s.obj(meta.get("pipeline"), "pipeline", optional=True)
    kind = pipeline.get("kind", "single") if pipeline else "single"
    if not isinstance(kind, str) or not NAME.fullmatch(kind):
        s.fail("pipeline.kind", f"must be a plain name, got {_show(kind)}")
    if kind == "single" and "model.onnx" not in files:
        s.fail("files", "does not list model.onnx, the graph a runtime opens, so no checksum covers it")
    elif kind == "latent_ddim":
        _check_ddim(s, pipeline, files)
    for key in ("fp16", "int8"):               # each graph's twin: FP16 for TensorRT, Q/DQ INT8 (--int8)
        twins = s.obj(meta.get(key), key, optional=True)
        for graph, twin in twins.items():
            s.text(graph, f"{key} (a key)", GRAPH, "an .onnx file name")
            s.text(twin, f"{key}[{graph!r}]", GRAPH, "an .onnx file name")
            _listed(s, graph, f"{key} (a key)", files)
            _listed(s, twin, f"{key}[{graph!r}]", files)


def _check_ddim(s: _Schema, p: dict, files: dict) -> None:
    graphs = s.obj(p.get("graphs"), "pipeline.graphs")
    for part in _DDIM_PARTS:
        name = s.text(graphs.get(part), f"pipeline.graphs.{part}", GRAPH, "an .onnx file name")
        _listed(s, name, f"pipeline.graphs.{part}", files)
    timesteps = s.integer(p.get("timesteps"), "pipeline.timesteps", 1, 100_000)
    s.integer(p.get("steps"), "pipeline.steps", 1, timesteps)
    for key in ("beta_start", "beta_end"):
        s.number(p.get(key), f"pipeline.{key}", 1e-9, 1.0)
    s.shape(p.get("latent_shape"), "pipeline.latent_shape", batch=False)
    s.integer(p.get("seed"), "pipeline.seed", 0, 2**63 - 1)
    if p.get("clamp") is not None:
        s.number(p.get("clamp"), "pipeline.clamp", 1e-6, 1e6)


def _check_engines(s: _Schema, meta: dict, files: dict) -> None:
    """TensorRT engines: names under engines/, listed; what they were built for, in plain values
    (these become Triton plan names and config keys)."""
    for name, info in s.obj(meta.get("engines"), "engines", optional=True).items():
        where = f"engines[{name!r}]"
        s.text(name, "engines (a key)", ENGINE, "engines/<plain name>.engine")
        _listed(s, name, "engines", files)
        info = s.obj(info, where)
        device = s.obj(info.get("device"), f"{where}.device")
        if not isinstance(device.get("gpu"), str) or not 0 < len(device["gpu"]) <= 200 or \
                not device["gpu"].isprintable():
            s.fail(f"{where}.device.gpu", f"must be a GPU name, got {_show(device.get('gpu'))}")
        s.text(device.get("compute_capability"), f"{where}.device.compute_capability",
               re.compile(r"\d{1,2}\.\d{1,2}"), "MAJOR.MINOR such as 8.7")
        s.text(device.get("tensorrt"), f"{where}.device.tensorrt", re.compile(r"\d{1,3}(\.\d{1,6}){0,3}([.+-][A-Za-z0-9]{1,20}){0,3}"),
               "a TensorRT version such as 10.3.0")
        check_name(device.get("platform"), f"{where}.device.platform", s.where)
        _listed(s, s.text(info.get("graph"), f"{where}.graph", GRAPH, "an .onnx file name"), f"{where}.graph", files)
        s.choice(info.get("precision"), f"{where}.precision", ("fp16", "fp32", "int8"))
        low = s.integer(info.get("min_batch"), f"{where}.min_batch", 1, MAX_BATCH)
        s.integer(info.get("max_batch"), f"{where}.max_batch", low, MAX_BATCH)


def _check_graph_inputs(s: _Schema, graph_inputs: dict) -> None:
    for name, spec in graph_inputs.items():
        check_name(name, "graph_inputs (a key)", s.where)
        spec = s.obj(spec, f"graph_inputs[{name!r}]")
        s.shape(spec.get("shape"), f"graph_inputs[{name!r}].shape", batch=False)
        s.choice(spec.get("dtype"), f"graph_inputs[{name!r}].dtype", ("float32",))   # what seeded_inputs makes
        s.choice(spec.get("distribution", "standard_normal"), f"graph_inputs[{name!r}].distribution",
                 ("standard_normal",))
        s.integer(spec.get("seed"), f"graph_inputs[{name!r}].seed", 0, 2**63 - 1)


def _listed(s: _Schema, name: str, field_name: str, files: dict) -> None:
    if name not in files:
        s.fail(field_name, f"names {name!r}, which files does not list, so no checksum covers it")


def _strict_json(value: Any) -> Any:
    """`value` with non-finite floats (a NaN metric of a run without defects) as null: meta.json stays
    strict JSON. Fields a runtime uses were validated finite before."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    return value


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------------------ adding files


def add_file(bundle: Bundle, name: str, data: bytes, meta_update: Callable[[dict], None]) -> Bundle:
    """Add (or replace) file `name` in an existing bundle: an engine built on this device.

    The file goes to a temporary name and is renamed into place, then meta.json is rewritten the
    same way with the file's checksum and `meta_update(meta)`'s changes, under a lock, so concurrent
    builders and a kill at any moment leave a readable bundle. It goes into the version that was
    read (`bundle.root`). Raises OSError when the bundle is read-only (the caller then keeps the
    file elsewhere)."""
    try:
        return _add_file(bundle, name, data, meta_update)
    except OSError as err:
        if not is_disk_full(err, bundle.root):
            raise
        raise disk_full_error(err, bundle.root, f"adding {name} to the bundle {bundle.path}",
                              f"the bundle is kept as it was (without {name}) and the temporary was removed") from err


def _add_file(bundle: Bundle, name: str, data: bytes, meta_update: Callable[[dict], None]) -> Bundle:
    root = bundle.root
    target = bundle.file(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in target.parent.glob(f".{target.name}.*.partial"):      # a killed builder's; we hold the lock
            stale.unlink(missing_ok=True)
        _atomic_write(target, data)
        meta = json.loads((root / META).read_text())
        meta.setdefault("files", {})[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        meta_update(meta)
        meta = _write_meta(root, meta, str(bundle.path))
    _link_new_top(bundle, name)
    return Bundle(bundle.path, meta, root)


def _write_meta(root: Path, meta: dict, where: str) -> dict:
    """Validate `meta` as a reader will see it and replace root/meta.json with it atomically (a
    temporary file, fsynced, renamed over the old one): a crash leaves the old meta.json or the new."""
    meta = json.loads(json.dumps(meta))
    validate_meta(meta, where)
    meta = _strict_json(meta)
    _atomic_write(root / META, (json.dumps(meta, indent=2, allow_nan=False) + "\n").encode())
    _fsync_dir(root)
    return meta


# ------------------------------------------------------------------------------ replacing calibration


def check_writable(path: str | Path) -> Bundle:
    """Refuse, before any image is scored, a bundle whose calibration cannot be rewritten: a meta.json
    without write permission (someone protected it: calibrate refuses rather than replace it with a
    writable one) or a version folder (or bundle folder, for the lock) that cannot be written. Returns
    the bundle as read (checksums not verified)."""
    path = Path(path)
    bundle = read_bundle(path, verify=False)
    _refuse_unwritable(bundle)
    return bundle


def _refuse_unwritable(bundle: Bundle) -> None:
    fix = "its calibration is unchanged: make it writable, or calibrate a copy (cp -a BUNDLE COPY), or use --dry-run"
    meta = bundle.root / META
    if not meta.stat().st_mode & 0o222:
        raise BundleError(f"{Path(bundle.path) / META} is write-protected (mode {oct(meta.stat().st_mode & 0o777)}); "
                          f"{fix.replace('make it writable', 'make it writable (chmod u+w)')}")
    lock = Path(bundle.path) / LOCK_FILE
    for folder, why in ((bundle.root, "meta.json is rewritten there"), (Path(bundle.path), "its lock is taken there")):
        if folder == Path(bundle.path) and os.path.exists(lock) and os.access(lock, os.W_OK):
            continue
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BundleError(f"cannot write into {folder} ({why}: read-only or permission denied); {fix}")


def replace_calibration(path: str | Path, calibration: dict, *, replaced_at: str,
                        scored_files: dict | None = None) -> Bundle:
    """Make `calibration` the bundle's and append the one it replaces (stamped `replaced_at`; method
    "training" when it does not say) to meta.json's calibration_history, the newest MAX_HISTORY kept.

    Only meta.json changes (the model files and their checksums stay as they are, verified before the
    write): under the export lock (no export or other calibration meanwhile) and the lock add_file
    takes, the new meta.json is validated, written to a temporary file and renamed over the old one
    in the version being read, so a crash at any moment leaves the old calibration or the new one,
    never a broken bundle. `scored_files`: meta["files"] of the bundle the calibration was scored on;
    when the current version's files differ (an export replaced the model meanwhile), the threshold
    belongs to the old model and is refused. Raises BundleError for a bundle that cannot be used or
    written."""
    path = Path(path)
    read_bundle(path)                                       # refuse a broken bundle before taking locks
    try:
        with _export_lock(path, busy=f"another export or calibration is writing {path} right now; wait for it to "
                                     "finish and run the command again"):
            bundle = read_bundle(path)                      # the version current now, checksums verified
            if scored_files is not None and bundle.meta["files"] != scored_files:
                raise BundleError(f"the bundle {path} was re-exported while calibrating (its model files are not the "
                                  "ones scored); its calibration is unchanged: run calibrate again")
            _refuse_unwritable(bundle)
            with open(bundle.root / LOCK, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                for stale in bundle.root.glob(f".{META}.*.partial"):      # a killed writer's; we hold the lock
                    stale.unlink(missing_ok=True)
                meta = json.loads((bundle.root / META).read_text())
                previous = {"method": "training", **meta["calibration"], "replaced_at": replaced_at}
                meta["calibration_history"] = [*(meta.get("calibration_history") or []), previous][-MAX_HISTORY:]
                meta["calibration"] = calibration
                meta = _write_meta(bundle.root, meta, str(path))
    except OSError as err:
        if is_disk_full(err, path):
            raise disk_full_error(err, path, f"calibrating the bundle {path}", "its calibration is unchanged") from err
        raise BundleError(f"cannot write the calibration into {path} ({err.strerror or err}); its calibration is "
                          "unchanged: make the bundle writable, or calibrate a copy (cp -a)") from err
    return Bundle(bundle.path, meta, bundle.root)


def _link_new_top(bundle: Bundle, name: str) -> None:
    """In a versioned bundle whose current version got a new top-level entry (engines/), link it."""
    path, top = Path(bundle.path), name.split("/")[0]
    current = path / CURRENT
    if current.is_symlink() and current.resolve() == bundle.root and not os.path.lexists(path / top):
        try:
            _swap_link(path / top, f"{CURRENT}/{top}")
        except OSError:
            pass                                      # the link is a convenience; readers go through meta.json


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` through a fsynced temporary renamed over it. The file keeps the mode
    of the one it replaces (a protected file stays protected); a new file gets 0666 less the umask."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.close(fd)
        with _open_for_write(Path(tmp)) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)                           # after the write: a read-only mode would refuse it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _inside(root: Path, name: str) -> Path:
    base = Path(root).resolve()
    target = (base / name).resolve()
    if base not in target.parents:
        raise BundleError(f"bundle file name {name!r} points outside the bundle directory; refusing it")
    return target


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MB blocks (bundles, runs and Triton manifests share it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_sha256 = file_sha256


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, links) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
