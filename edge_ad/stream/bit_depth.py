"""The real bit depth of 16-bit frames, on a source's reader thread.

A 12-bit machine-vision camera delivers its values 0..4095 in 16-bit words. Scaled as 16-bit data
they become 0..15 (near black), so a source that knows its camera's depth (`bit_depth`, from
`--bit-depth`, `--camera bit_depth=12` or the station file) scales each 16-bit frame by it
(`edge_ad.imaging.scale_words`) before the frame is converted for the model, and warns when a frame
holds values above that depth (a wrong setting: they are clipped to white). A source that was told
nothing scales by the whole word, as before, and never guesses from the values (a dark 16-bit scene
and a 12-bit one hold the same numbers); when the first frames never use the top bits it logs a hint
saying which depth they fit, and how to declare it.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_ad.imaging import MIN_BIT_DEPTH, WORD_BITS, check_bit_depth, scale_words
from edge_ad.logs import Throttle

__all__ = ["DepthScaler", "ScalesDepth", "shallow_hint"]

log = logging.getLogger("edge_ad.stream.sources")

HINT_FRAMES = 30            # undeclared 16-bit frames watched for the "looks like N-bit data" hint
HINT_MAX_BITS = 14          # values that fit in this many bits (a quarter of the word or less) get the hint
COMMON_DEPTHS = (10, 12, 14)  # the depths machine-vision cameras deliver in 16-bit words


def shallow_hint(max_value: int, what: str, flag: str = "--bit-depth") -> str | None:
    """The hint for undeclared 16-bit data whose largest value is `max_value`, or None when the values
    use the word's top bits (or are all 0): which depth they fit, and how to declare the camera's."""
    bits = max(int(max_value).bit_length(), MIN_BIT_DEPTH)
    if max_value <= 0 or bits > HINT_MAX_BITS:
        return None
    likely = next(d for d in COMMON_DEPTHS if d >= bits)
    return (f"{what} are 16-bit but never exceed {max_value} (they fit in {bits} bits): they are scaled as 16-bit "
            f"data, which makes {likely}-bit data near black. If the camera is {likely}-bit, declare it "
            f"({flag} {likely}); if it is a 16-bit camera looking at a dark scene, ignore this")


class DepthScaler:
    """Per source: 16-bit frames -> 8-bit frames of the same shape when a depth is declared (and the
    over-range warning); undeclared ones pass through unchanged (watched for the hint)."""

    def __init__(self, bit_depth: int | None = None) -> None:
        self.depth = check_bit_depth(bit_depth)
        self._announced = False
        self._watched = 0
        self._max = 0
        self._clipped = Throttle(log, interval=60.0, burst=1)

    def __call__(self, image, index: int, source: str):
        """`image` scaled to uint8 when it is 16-bit and a depth is declared; else `image` itself."""
        if self.depth is None or not _words(image):
            if _words(image):
                self._watch(image, source)
            return image
        if not image.dtype.isnative:
            image = image.astype(image.dtype.newbyteorder("="))
        if not self._announced:
            self._announced = True
            log.info("source %s: 16-bit frames holding %d-bit values (declared): scaled by >> %d", source,
                     self.depth, self.depth - MIN_BIT_DEPTH, extra={"source": source})
        if self.depth < WORD_BITS:
            top = int(image.max())
            if top > (1 << self.depth) - 1:
                self._clipped(logging.WARNING, "source %s: frame %d holds values up to %d, above the %d-bit maximum "
                              "%d: clipped to white. Check the declared bit depth (%d)", source, index, top,
                              self.depth, (1 << self.depth) - 1, self.depth, extra={"source": source})
        return scale_words(image, self.depth)

    def _watch(self, image: np.ndarray, source: str) -> None:
        if self._watched >= HINT_FRAMES:
            return
        self._watched += 1
        self._max = max(self._max, int(image.max()))
        if self._watched == HINT_FRAMES or self._watched == 1 and self._max > (1 << HINT_MAX_BITS) - 1:
            hint = shallow_hint(self._max, f"the first {self._watched} frames of {source}")
            self._watched = HINT_FRAMES
            if hint:
                log.warning("source %s: %s", source, hint, extra={"source": source})


class ScalesDepth:
    """Mixin for a Source: its 16-bit frames are scaled by `bit_depth` before the base class converts
    them. Put it before Source in the bases; set `bit_depth` (8..16 or None) before the source starts."""

    _scaler: DepthScaler | None = None

    @property
    def bit_depth(self) -> int | None:
        """The declared depth of this source's 16-bit frames; None: not declared (16 is used)."""
        return self._scaler.depth if self._scaler is not None else None

    @bit_depth.setter
    def bit_depth(self, value: int | None) -> None:
        self._scaler = DepthScaler(value)

    def _accept(self, image, index: int):
        if self._scaler is None:
            self._scaler = DepthScaler(None)
        if isinstance(image, np.ndarray) and image.ndim >= 2 and image.shape[0] * image.shape[1] > self._limit:
            return super()._accept(image, index)           # refused there, unconverted
        scaled = self._scaler(image, index, self.name)
        if scaled is not image and scaled.ndim == 3 and scaled.shape[2] == 3:
            self.stats.frames_converted += 1               # the base sees 8-bit colour: count it here
        return super()._accept(scaled, index)


def _words(image) -> bool:
    """Whether `image` is an array of 16-bit unsigned samples (either byte order)."""
    return isinstance(image, np.ndarray) and image.dtype.kind == "u" and image.dtype.itemsize == 2
