"""The on-disk bundle: a directory with meta.json, model.onnx (+ engines/, checkpoint.pt).

Writing goes into a temporary sibling directory that is renamed into place only when complete, so
an interrupted export never leaves half a bundle. Reading checks the format version and the sha256
of every listed file, and refuses files that would leave the bundle directory or exceed a size
limit; every refusal names the file and says what to do. No pickle is read here: meta.json is JSON
and model files are handed to the runtimes as bytes/paths. Never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import edge_ad

__all__ = ["BundleError", "Bundle", "FORMAT_VERSION", "add_file", "read_bundle", "write_bundle"]

FORMAT_VERSION = 1
META = "meta.json"
MAX_FILE_BYTES = 4 << 30          # no model file of ours comes near 4 GiB
MAX_META_BYTES = 1 << 20


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    meta: dict

    def file(self, name: str) -> Path:
        """Path of a listed bundle file, checked to stay inside the bundle."""
        return _inside(self.path, name)

    @property
    def model_name(self) -> str:
        return self.meta["model"]


def write_bundle(out: str | Path, meta: dict, fill: Callable[[Path], None], *, overwrite: bool = False) -> Bundle:
    """Create bundle `out`: `fill(tmp_dir)` writes the files, then checksums and meta.json are added
    and the directory is renamed into place. An exception anywhere leaves no `out` behind."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise BundleError(f"{out} already exists; choose another --out or pass overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        fill(tmp)
        files = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            files[rel] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
        full = {"format_version": FORMAT_VERSION, "edge_ad_version": edge_ad.__version__, **meta, "files": files}
        (tmp / META).write_text(json.dumps(full, indent=2) + "\n")
        _fsync_dir(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Bundle(out, full)


def read_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Open and validate a bundle directory."""
    path = Path(path)
    meta_path = path / META
    if not path.is_dir():
        raise BundleError(f"bundle not found: {path} (export one with `edge-ad export RUN --out BUNDLE`)")
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a bundle: {META} is missing (was the export interrupted?)")
    if meta_path.stat().st_size > MAX_META_BYTES:
        raise BundleError(f"{meta_path} is over {MAX_META_BYTES} bytes; not a bundle of ours")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{meta_path} is not valid JSON ({err}); re-export the bundle") from err
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        made_by = meta.get("edge_ad_version", "an unknown version")
        raise BundleError(f"{path} has bundle format {version} (made by edge_ad {made_by}); this edge_ad "
                          f"{edge_ad.__version__} reads format {FORMAT_VERSION}: re-export it with this version")
    bundle = Bundle(path, meta)
    for name, info in meta.get("files", {}).items():
        file = bundle.file(name)
        if not file.is_file():
            raise BundleError(f"{file} is listed in {META} but missing; copy the whole bundle directory")
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BundleError(f"{file} has {size} bytes, over the {MAX_FILE_BYTES}-byte limit of a bundle file; "
                              "refusing it (no model file of edge_ad comes near it)")
        if size != info.get("bytes", size):
            raise BundleError(f"{file} has {size} bytes, {META} says {info.get('bytes')}; the copy is "
                              "incomplete or the file was replaced")
        if verify and _sha256(file) != info.get("sha256"):
            raise BundleError(f"checksum mismatch for {file}: the file is corrupt or was modified; "
                              "copy the bundle again or re-export it")
    return bundle


def add_file(bundle: Bundle, name: str, data: bytes, meta_update: Callable[[dict], None]) -> Bundle:
    """Add (or replace) file `name` in an existing bundle: an engine built on this device.

    The file goes to a temporary name and is renamed into place, then meta.json is rewritten the
    same way with the file's checksum and `meta_update(meta)`'s changes, under a lock, so concurrent
    builders and a kill at any moment leave a readable bundle. Raises OSError when the bundle is
    read-only (the caller then keeps the file elsewhere)."""
    import fcntl

    target = bundle.file(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(bundle.path / ".meta.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _atomic_write(target, data)
        meta = json.loads((bundle.path / META).read_text())
        meta.setdefault("files", {})[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        meta_update(meta)
        _atomic_write(bundle.path / META, (json.dumps(meta, indent=2) + "\n").encode())
    return Bundle(bundle.path, meta)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _inside(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if root.resolve() not in target.parents:
        raise BundleError(f"bundle file name {name!r} points outside the bundle directory; refusing it")
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
