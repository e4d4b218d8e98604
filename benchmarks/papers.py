"""The papers' timings (../shared/SPECS.md), the baselines fps.py compares against: the tables live on
the runtime side (edge_ad/runtime/papers.py) so `edge-ad bench` has them on an edge box too."""

from edge_ad.runtime.papers import OTHERS, PAPERS, vs_paper

__all__ = ["OTHERS", "PAPERS", "vs_paper"]
