"""CUDA graphs of a backend's per-batch sequence: capture once, replay after, fall back when capture fails.

A device backend queues one sequence per call (copy in, engines, kernels, copy out) on one stream. With
graphs on, the first call of a key (batch size, maps or not) runs that sequence plainly (TensorRT needs
one plain enqueue before a capture), then captures it and replays the graph from then on. A capture can
fail (an engine with an operation that cannot be captured, a stream that cannot be captured): then the
capture is ended and discarded, the original error is logged, no graph is kept, and the backend runs
plainly from then on, as trtexec does. The plain run before the capture has already produced the
results of that call (a capture queues work, it does not run it), so nothing is lost.

`cuda` is anything with `cuda_graph_begin_capture`, `cuda_graph_end_capture`, `cuda_graph_launch` and
`cuda_graph_destroy` (the compiled edge_ad._kernels; a test double in the tests, since no GPU exists
where this was written). Unverified on a GPU: the capture-failure path has only run against that double.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)

__all__ = ["CudaGraphs"]


class CudaGraphs:
    """Graphs by key on one stream; `run(key, stream, work)` replays, captures or runs `work` plainly."""

    def __init__(self, cuda: Any, synchronize: Callable[[int], None], *, enabled: bool = True) -> None:
        self.cuda = cuda
        self.synchronize = synchronize
        self.graphs: dict[Hashable, int] = {}
        self.off_reason: str | None = None if enabled else "turned off (cuda_graph=False)"

    @property
    def enabled(self) -> bool:
        """False when graphs were turned off or a capture failed: every call runs plainly."""
        return self.off_reason is None

    def run(self, key: Hashable, stream: int, work: Callable[[], None]) -> None:
        """Queue `work`'s sequence on `stream`: the key's graph if one was captured, else a plain run
        (and, the first time, a capture). The caller synchronizes the stream before reading results."""
        if not self.enabled:
            work()
            return
        graph = self.graphs.get(key)
        if graph is None:
            work()                                  # the plain run first, as TensorRT requires
            self.synchronize(stream)
            graph = self._capture(key, stream, work)
            if graph is None:
                return                              # that plain run's results stand
            self.graphs[key] = graph
        self.cuda.cuda_graph_launch(graph, stream)

    def _capture(self, key: Hashable, stream: int, work: Callable[[], None]) -> int | None:
        """The instantiated graph of `work`, or None (logged, graphs off) when any step of the capture fails."""
        try:
            self.cuda.cuda_graph_begin_capture(stream)
        except RuntimeError as err:
            return self._give_up(key, err)
        try:
            work()
        except BaseException as err:
            self._discard(stream)
            if not isinstance(err, Exception):      # KeyboardInterrupt, SystemExit: capture ended, go on up
                raise
            return self._give_up(key, err)
        try:
            graph = self.cuda.cuda_graph_end_capture(stream)
        except RuntimeError as err:                 # invalidated capture, or instantiation refused
            return self._give_up(key, err)
        if not graph:
            return self._give_up(key, RuntimeError("cuda_graph_end_capture returned a null graph"))
        return graph

    def _discard(self, stream: int) -> None:
        """End a capture that failed part-way (the stream must leave capture mode) and destroy whatever
        it instantiated; its own error is expected (the capture was invalidated) and only logged at debug."""
        try:
            graph = self.cuda.cuda_graph_end_capture(stream)
        except RuntimeError as err:
            log.debug("ending the failed CUDA graph capture: %s", err)
            return
        if graph:
            self.cuda.cuda_graph_destroy(graph)

    def _give_up(self, key: Hashable, err: BaseException) -> None:
        self.off_reason = f"capture failed for {key!r}: {type(err).__name__}: {err}"
        log.warning("CUDA graph capture failed for %r (%s: %s); running without CUDA graphs from now on. "
                    "Pass cuda_graph=False to skip the attempt", key, type(err).__name__, err)
        return None

    def close(self) -> None:
        """Destroy every captured graph."""
        graphs, self.graphs = list(self.graphs.values()), {}
        for graph in graphs:
            self.cuda.cuda_graph_destroy(graph)
