"""Test doubles shared by several test files, each standing in for something that cannot be made here."""

from __future__ import annotations

import errno
import io
from pathlib import Path


class FullDisk(io.RawIOBase):
    """A real file that takes `room` bytes and then fails as a full disk does (OSError ENOSPC): the one
    test double for a full disk, which cannot be made here."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__()
        self.file, self.room = open(path, "wb"), room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            self.file.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def fileno(self) -> int:
        return self.file.fileno()

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()

    def close(self) -> None:
        super().close()                     # flushes first, while the file is still open
        self.file.close()


_BLOCKER = """
import sys


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in {blocked!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked in this test)", name=name)


sys.meta_path.insert(0, _Blocked())
"""


def python_without(blocked, code: str, *, cwd=None, timeout: float = 300):
    """Run `code` in a fresh interpreter of this venv where importing any of `blocked` (packages, with
    their submodules) raises ModuleNotFoundError, as on an install that lacks them; the CompletedProcess."""
    import subprocess
    import sys
    import textwrap

    script = _BLOCKER.format(blocked=tuple(blocked)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=cwd)
