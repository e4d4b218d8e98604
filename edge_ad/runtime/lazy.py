"""`"module:attribute"` references, imported only when used.

The registries of the runtime (backends, device-memory sources) name implementations that live on the
other side of the torch line, or need libraries that may be absent, by such a string: the runtime
never imports them until a user asks for them by name.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_ref", "check_ref"]


def check_ref(ref: str) -> str:
    """`ref` when it has the form "package.module:attribute"; a ValueError otherwise."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr or not all(p.isidentifier() for p in [*module.split("."), *attr.split(".")]):
        raise ValueError(f"a lazy reference is 'package.module:attribute', got {ref!r}")
    return ref


def import_ref(ref: str) -> Any:
    """Import the module of "package.module:attribute" and return the attribute."""
    module, _, attr = check_ref(ref).partition(":")
    value: Any = importlib.import_module(module)
    for part in attr.split("."):
        value = getattr(value, part)
    return value
