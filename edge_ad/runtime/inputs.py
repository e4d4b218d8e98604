"""Graph inputs that are not camera frames: seeded noise, drawn once per detector (and so per stream).

A bundle lists them in meta.json under `graph_inputs` as {name: {shape, dtype, distribution, seed}};
the same `seeded_normal` numbers feed PyTorch at export and every runtime backend, so the exported
graph and the checkpoint agree and a still camera gives a still score. Never imports torch.
"""

from __future__ import annotations

import numpy as np

from edge_ad.runtime.noise_schedules import seeded_normal

__all__ = ["seeded_inputs"]


def seeded_inputs(specs: dict, seed: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a bundle's `graph_inputs`; `seed` overrides the bundle's own seed."""
    out = {}
    for name, spec in specs.items():
        if spec.get("distribution", "standard_normal") != "standard_normal" or spec.get("dtype") != "float32":
            raise ValueError(f"graph input {name!r}: only float32 standard-normal noise is known to this "
                             f"edge_ad, the bundle asks for {spec}; upgrade edge_ad or re-export the bundle")
        out[name] = seeded_normal(int(spec["seed"] if seed is None else seed), tuple(spec["shape"]))
    return out
