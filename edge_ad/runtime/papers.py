"""The papers' timings (shared/SPECS.md): what `edge-ad bench` and benchmarks/fps.py compare against.

On the runtime side so an edge box without the repository's benchmarks/ folder can still say how its
frame rate compares; benchmarks/papers.py re-exports these tables.
"""

from __future__ import annotations

__all__ = ["OTHERS", "PAPERS", "vs_paper"]

PAPERS = {
    "simplenet": {"fps": 77.0, "hardware": "RTX 3080 Ti", "source": "SimpleNet paper (004)"},
    "diffad": {"fps": 1 / 0.10, "hardware": "Tesla V100", "source": "DiffAD paper (001), Table 5, 5 DDIM steps",
               "steps": 5},
}

# For context only (no model of ours): the field's speed reference and DiffAD's comparison methods.
OTHERS = {
    "EfficientAD-M": {"fps": 1 / 0.0045, "hardware": "RTX A6000"},
    "DRAEM": {"fps": 1 / 0.01, "hardware": "Tesla V100"},
    "PaDiM": {"fps": 1 / 0.19, "hardware": "Tesla V100"},
    "PatchCore-10%": {"fps": 1 / 0.22, "hardware": "Tesla V100"},
}


def vs_paper(model: str, fps: float, steps: int | None = None) -> dict | None:
    """`fps` against the paper's timing of `model` (None when its paper gives none): the ratio, the paper's
    figure and hardware, and a note when a diffusion model ran at another step count than the paper's."""
    paper = PAPERS.get(model)
    if paper is None:
        return None
    out = {"ratio": fps / paper["fps"], "paper_fps": paper["fps"], "hardware": paper["hardware"],
           "source": paper["source"]}
    if steps is not None and paper.get("steps") not in (None, steps):
        out["note"] = f"paper at {paper['steps']} steps, here {steps}"
    return out
