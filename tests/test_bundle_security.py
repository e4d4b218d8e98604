"""A bundle is untrusted input: no pickle, no path out of its folder, no oversized file, no altered file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

import edge_ad
import edge_ad.bundle as bundle_module
from edge_ad.bundle import BundleError, read_bundle


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def _relist(bundle, name: str) -> None:
    """Rewrite meta.json's entry of `name` to match the file, as an attacker who edits both would."""
    meta = json.loads((bundle / "meta.json").read_text())
    data = (bundle / name).read_bytes()
    meta["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "meta.json").write_text(json.dumps(meta))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/edge_ad_pwned",))


def test_checkpoint_with_pickled_code_is_refused(copy) -> None:
    import torch

    state = torch.load(copy / "checkpoint.pt", weights_only=True)
    state["extra"] = _Payload()
    torch.save(state, copy / "checkpoint.pt")
    _relist(copy, "checkpoint.pt")
    with pytest.raises(BundleError, match=r"checkpoint\.pt holds more than weights"):
        edge_ad.load(copy, backend="torch-cpu")
    assert not os.path.exists("/tmp/edge_ad_pwned")


def test_listed_path_outside_the_bundle_is_refused(copy, tmp_path) -> None:
    (tmp_path / "secret.txt").write_text("x")
    meta = json.loads((copy / "meta.json").read_text())
    meta["files"]["../secret.txt"] = {"sha256": hashlib.sha256(b"x").hexdigest(), "bytes": 1}
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"'\.\./secret\.txt' points outside the bundle directory"):
        read_bundle(copy)


def test_symlink_out_of_the_bundle_is_refused(copy, tmp_path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(copy / "model.onnx", outside)
    (copy / "model.onnx").symlink_to(outside)            # same bytes, same checksum, but outside
    with pytest.raises(BundleError, match=r"'model\.onnx' points outside the bundle directory"):
        read_bundle(copy)


def test_oversized_file_is_refused(copy, monkeypatch) -> None:
    monkeypatch.setattr(bundle_module, "MAX_FILE_BYTES", 1000)
    with pytest.raises(BundleError, match=r"checkpoint\.pt has \d+ bytes, over the 1000-byte limit"):
        read_bundle(copy)


def test_oversized_meta_is_refused(copy) -> None:
    meta = json.loads((copy / "meta.json").read_text())
    meta["padding"] = "x" * (2 << 20)
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="meta.json is over"):
        read_bundle(copy)


def test_altered_file_is_named(copy) -> None:
    data = bytearray((copy / "model.fp16.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.fp16.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for .*model\.fp16\.onnx"):
        read_bundle(copy)
