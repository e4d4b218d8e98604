"""Reading and normalizing images: any of grayscale, RGB, RGBA, 8 or 16 bit -> RGB uint8.

Every file is checked before it is decoded: its header (PNG, JPEG, BMP, TIFF, WebP) must name a
size within the pixel limit, so a 3 KB file that declares 100000 x 100000 pixels (an "image bomb")
is refused, naming the file, without the decoder ever allocating for it. The limit is
`DEFAULT_MAX_PIXELS` (50 megapixels), or the environment variable `EDGE_AD_MAX_IMAGE_PIXELS`, or the
`max_pixels` argument of the readers.

Bit depth: a 10-, 12- or 14-bit camera image usually comes in 16-bit words, its values 0..1023/4095/
16383. Scaled as a 16-bit image it would be near black (4095 >> 8 = 15), so 16-bit data is scaled by
its *real* depth d (the top 8 of its d significant bits, `v >> (d - 8)`; values above 2**d - 1 are
clipped to white). The depth is, in order: the one the caller declares (`bit_depth`, `--bit-depth`),
the one the file declares (a TIFF's MaxSampleValue tag; a PNG's sBIT chunk when the values are stored
unscaled, see `file_bit_depth`), else 16, the whole word. It is never guessed from the values: a dark
16-bit image and a bright 12-bit one hold the same numbers.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 50_000_000          # 50 MP: above any area or line-scan frame a line sends per part
MAX_PIXELS_ENV = "EDGE_AD_MAX_IMAGE_PIXELS"
_BYTES_PER_PIXEL_MAX = 8                 # 16-bit RGBA uncompressed: the largest a supported file needs per pixel
_FORMATS = "PNG, JPEG, BMP, TIFF or WebP"
WORD_BITS = 16                           # 16-bit words: the widest integer samples accepted
MIN_BIT_DEPTH = 8


class ImageReadError(ValueError):
    """An image file that cannot be decoded (missing, truncated, corrupt or not an image)."""


class NotAnImageError(ImageReadError):
    """A file whose first bytes are not those of a supported image format (it will not become one)."""


class ImageTooLargeError(ImageReadError):
    """An image whose declared size is over the pixel limit (an image bomb, or a limit set too low)."""


def max_image_pixels(value: int | None = None) -> int:
    """The pixel limit: `value` when given, else $EDGE_AD_MAX_IMAGE_PIXELS, else DEFAULT_MAX_PIXELS."""
    if value is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_PIXELS
        try:
            value = int(float(text)) if any(c in text.lower() for c in ".e") else int(text)
        except (ValueError, OverflowError):
            raise ValueError(f"{MAX_PIXELS_ENV}={text!r} is not a number of pixels; set e.g. "
                             f"{MAX_PIXELS_ENV}=100000000 or unset it (default {DEFAULT_MAX_PIXELS})") from None
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"the image pixel limit must be a positive whole number of pixels, got {value!r}")
    return int(value)


def check_pixels(width: int, height: int, where: str, max_pixels: int | None = None) -> None:
    """Raise ImageTooLargeError when `width` x `height` is over the pixel limit (`where` names the image)."""
    limit = max_image_pixels(max_pixels)
    if width * height > limit:
        raise ImageTooLargeError(f"{where} is {width}x{height} pixels ({width * height / 1e6:.1f} MP), over the "
                                 f"limit of {limit / 1e6:g} MP; it was not decoded. If such images are expected, "
                                 f"raise the limit with {MAX_PIXELS_ENV}=<pixels>")


def image_size(header: bytes | memoryview) -> tuple[int, int]:
    """(width, height) declared by a PNG, JPEG, BMP, TIFF or WebP file's first bytes, without decoding.

    Raises ImageReadError (without the file name: the caller adds it) for anything else or a header
    that is truncated or malformed."""
    try:
        return _header_size(header)
    except (struct.error, IndexError, ValueError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(f"the image header is malformed ({err})") from None


def _header_size(header: bytes | memoryview) -> tuple[int, int]:
    if header[:8] == b"\x89PNG\r\n\x1a\n":
        return _png_size(header)
    if header[:3] == b"\xff\xd8\xff":
        return _jpeg_size(header)
    if header[:2] == b"BM":
        return _bmp_size(header)
    if header[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _tiff_size(header)
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return _webp_size(header)
    if len(header) < 16:
        raise ImageReadError(f"the file is empty or too short ({len(header)} bytes) to be an image")
    raise NotAnImageError(f"not a {_FORMATS} file")


def _need(data: bytes | memoryview, end: int, what: str) -> None:
    if len(data) < end:
        raise ImageReadError(f"the {what} header is truncated")


def _png_size(data: bytes | memoryview) -> tuple[int, int]:
    """IHDR's size, after checking that every chunk fits in the file: OpenCV 5 allocates what a chunk's
    length field says (4 GiB for 0xFFFFFFFF) before it notices the file is shorter."""
    _need(data, 24, "PNG")
    if data[12:16] != b"IHDR":
        raise ImageReadError("the PNG header has no IHDR chunk first")
    size = struct.unpack(">II", data[16:24])
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = bytes(data[pos + 4:pos + 8])
        if length > 0x7FFFFFFF or pos + 12 + length > len(data):
            raise ImageReadError(f"the PNG chunk {kind!r} at byte {pos} declares {length} bytes, more than the "
                                 f"file holds (it is truncated or corrupt)")
        pos += 12 + length
        if kind == b"IEND":
            return size
    raise ImageReadError("the PNG file is truncated (no IEND chunk)")


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """Walk the marker segments to the first start-of-frame (SOF0..SOF15 but DHT, JPG, DAC)."""
    pos = 2
    while True:
        while pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF:
            pos += 1                                               # fill bytes
        _need(data, pos + 4, "JPEG")
        if data[pos] != 0xFF:
            raise ImageReadError("the JPEG header is corrupt (no marker where one is due)")
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:      # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            raise ImageReadError("the JPEG file ends before its frame header")
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if length < 2:
            raise ImageReadError("the JPEG header is corrupt (a segment length below 2)")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            _need(data, pos + 9, "JPEG")
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            if height == 0 or width == 0:
                raise ImageReadError("the JPEG frame header declares no size (DNL JPEGs are not supported)")
            return width, height
        pos += 2 + length


def _bmp_size(data: bytes | memoryview) -> tuple[int, int]:
    _need(data, 18, "BMP")
    dib = struct.unpack("<I", data[14:18])[0]
    if dib == 12:
        _need(data, 22, "BMP")
        width, height = struct.unpack("<HH", data[18:22])
    else:
        _need(data, 26, "BMP")
        width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _tiff_size(data: bytes | memoryview) -> tuple[int, int]:
    """ImageWidth (256) and ImageLength (257) of the first image file directory (classic or BigTIFF)."""
    end = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    _need(data, 16 if big else 8, "TIFF")
    offset = struct.unpack(end + "Q", data[8:16])[0] if big else struct.unpack(end + "I", data[4:8])[0]
    count_size, entry_size = (8, 20) if big else (2, 12)
    _need(data, offset + count_size, "TIFF")
    count = struct.unpack(end + ("Q" if big else "H"), data[offset:offset + count_size])[0]
    sizes: dict[int, int] = {}
    for k in range(min(count, 4096)):
        at = offset + count_size + k * entry_size
        _need(data, at + entry_size, "TIFF")
        tag, kind = struct.unpack(end + "HH", data[at:at + 4])
        if tag in (256, 257):
            value = data[at + (12 if big else 8):at + entry_size]
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind) if big else {3: "H", 4: "I"}.get(kind)
            if fmt is None:
                raise ImageReadError(f"the TIFF size tag {tag} has an unsupported type {kind}")
            sizes[tag] = struct.unpack(end + fmt, value[:struct.calcsize(fmt)])[0]
    if 256 not in sizes or 257 not in sizes:
        raise ImageReadError("the TIFF header has no image width or length")
    return sizes[256], sizes[257]


def _webp_size(data: bytes | memoryview) -> tuple[int, int]:
    _need(data, 30, "WebP")
    chunk = data[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise ImageReadError("the WebP header has no VP8/VP8L/VP8X chunk")


def _read_checked(path: Path, what: str, max_pixels: int | None) -> np.ndarray:
    """Read and decode `path` after checking its header against the pixel limit; ImageReadError otherwise."""
    return _decode_checked(path, what, max_pixels)[0]


def _decode_checked(path: Path, what: str, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(the decoded image, the file's bytes) of `path`, its header checked against the pixel limit first."""
    if not path.is_file():
        raise ImageReadError(f"{what} not found: {path}")
    limit = max_image_pixels(max_pixels)
    try:
        size = path.stat().st_size
        if size > limit * _BYTES_PER_PIXEL_MAX + (1 << 20):
            raise ImageTooLargeError(f"{what} {path} is {size / 1e6:.0f} MB, more than an image within the limit of "
                                     f"{limit / 1e6:g} MP can take; raise the limit with {MAX_PIXELS_ENV}=<pixels>")
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode handles non-ASCII paths
    except OSError as err:
        raise ImageReadError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        width, height = image_size(memoryview(data))
    except ImageReadError as err:
        raise type(err)(f"cannot decode {path}: the file is corrupt, truncated or not an image ({err})") from None
    check_pixels(width, height, f"{what} {path}", limit)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as err:
        raise ImageReadError(f"cannot decode {path}: {str(err).strip().splitlines()[-1]}") from None
    if image is None:
        raise ImageReadError(f"cannot decode {path}: the file is corrupt, truncated or not an image")
    if image.shape[0] * image.shape[1] > limit:     # a container whose header and data disagree
        check_pixels(image.shape[1], image.shape[0], f"{what} {path}", limit)
    return image, data


def read_image(path: str | Path, *, max_pixels: int | None = None, bit_depth: int | None = None) -> np.ndarray:
    """Read an image file as H x W x 3 RGB uint8, whatever its channels and bit depth.

    16-bit files are scaled by their real depth: `bit_depth` when given (8..16), else the depth the
    file declares, else 16 (see the module's docstring). Raises ImageReadError (naming the file) when
    it is missing, corrupt, not a PNG/JPEG/BMP/TIFF/WebP, or declares more pixels than the limit
    (ImageTooLargeError; see `max_image_pixels`)."""
    return read_image_depth(path, max_pixels=max_pixels, bit_depth=bit_depth)[0]


def read_image_depth(path: str | Path, *, max_pixels: int | None = None,
                     bit_depth: int | None = None) -> tuple[np.ndarray, "DepthUsed"]:
    """`read_image`, and how its samples were scaled (`DepthUsed`): what a caller reports or warns about."""
    path = Path(path)
    given = check_bit_depth(bit_depth)
    image, data = _decode_checked(path, "image", max_pixels)
    used = DepthUsed(8, "word", 0)
    if image.dtype == np.uint16:
        declared = None if given is not None else declared_bit_depth(memoryview(data))
        depth, how = (given, "given") if given is not None else file_bit_depth(image, declared)
        used = DepthUsed(depth, how, int(image.max()))
    try:
        return to_rgb_uint8(image, bgr=True, bit_depth=used.depth if image.dtype == np.uint16 else None), used
    except ValueError as err:
        raise ImageReadError(f"cannot use {path}: {err}") from None


def read_mask(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read a ground-truth mask as H x W uint8 with 1 = anomalous (any nonzero value)."""
    path = Path(path)
    try:
        mask = _read_checked(path, "mask", max_pixels)
    except ImageTooLargeError:
        raise
    except ImageReadError as err:
        raise ImageReadError(f"cannot decode mask {path}: the file is missing, corrupt or not an image "
                             f"({str(err).split(': ', 1)[-1]})") from None
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return (mask > 0).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray, *, bgr: bool = True, bit_depth: int | None = None) -> np.ndarray:
    """Convert a decoded image (H x W, H x W x 1/3/4; uint8, uint16 or float in [0, 1]) to RGB uint8.

    `bgr` says the channel order of 3/4-channel input (OpenCV decodes to BGR). Alpha is dropped.
    `bit_depth` (8..16; None: 16) is the real depth of uint16 samples (`scale_words`); 8-bit and
    float images do not use it.
    Float images must hold values in [0, 1] (a float image in 0..255 is refused rather than clipped
    to white); NaN/inf values, other dtypes and other shapes raise a ValueError saying what to pass.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an image as a numpy array, got {type(image).__name__}")
    _check_shape(image)
    if image.size == 0:
        raise ValueError(f"expected a non-empty image array, got shape {image.shape}")
    if not image.dtype.isnative:                  # big-endian 16-bit or float from a camera SDK
        image = image.astype(image.dtype.newbyteorder("="))
    depth = check_bit_depth(bit_depth)
    if image.dtype == np.uint16:
        image = scale_words(image, WORD_BITS if depth is None else depth)
    elif np.issubdtype(image.dtype, np.floating):
        image = _float_to_uint8(image)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float in [0, 1] "
                         f"(e.g. image.astype(np.uint8) for 8-bit values held in a wider integer type)")
    image = np.ascontiguousarray(image)           # cv2 refuses negative strides (flipped views)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image


def _check_shape(image: np.ndarray) -> None:
    """Only H x W and H x W x 1/3/4 are images; say what a batch or a channels-first array should be."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
        return
    if image.ndim == 4:
        raise ValueError(f"unsupported image shape {image.shape}: a 4-D array is a batch; pass one image "
                         f"(H x W x C) or a list of images")
    if image.ndim == 3 and image.shape[0] in (1, 3, 4):
        raise ValueError(f"unsupported image shape {image.shape}; expected H x W x 1, 3 or 4 (channels last: "
                         f"use image.transpose(1, 2, 0) for a channels-first array)")
    raise ValueError(f"unsupported image shape {image.shape}; expected H x W x 1, 3 or 4")


def _float_to_uint8(image: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8 (rounded). NaN/inf and values outside [0, 1] are refused, not clipped."""
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(image.size - np.count_nonzero(finite))
        raise ValueError(f"the image holds {bad} NaN or infinite value(s); pass a finite image")
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise ValueError(f"float image values must be in [0, 1], got {low:g}..{high:g}; pass uint8 "
                         f"(image.astype(np.uint8)) or divide by 255")
    return np.clip(image.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


# Bit depth -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DepthUsed:
    """How an image's samples were scaled to 8 bits: `depth` (8 for 8-bit data), `how` it was chosen
    ("given" by the caller, "file": declared by the file, "word": the sample word's own size) and
    `max_value`, the largest sample of 16-bit data (0 for 8-bit): for a warning that it looks shallower."""

    depth: int
    how: str
    max_value: int


def check_bit_depth(value) -> int | None:
    """`value` as a bit depth 8..16, or None; ValueError saying what to give otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not \
            MIN_BIT_DEPTH <= int(value) <= WORD_BITS:
        raise ValueError(f"bit depth must be a whole number of bits from {MIN_BIT_DEPTH} to {WORD_BITS} (e.g. 12 for "
                         f"a 12-bit camera delivering 16-bit words), got {value!r}")
    return int(value)


def scale_words(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """uint16 samples holding `bit_depth`-bit values -> uint8 of the same shape: the top 8 significant
    bits (`v >> (bit_depth - 8)`, so 2**bit_depth - 1 becomes 255; 16 is the old `>> 8`). Values above
    2**bit_depth - 1 (a wrong depth, or a hot pixel) are clipped to 255."""
    depth = check_bit_depth(bit_depth)
    if image.dtype != np.uint16:
        raise ValueError(f"scale_words takes uint16 samples, got {image.dtype}")
    shifted = np.right_shift(image, depth - MIN_BIT_DEPTH)
    if depth < WORD_BITS:
        np.minimum(shifted, 255, out=shifted)
    return shifted.astype(np.uint8)


def declared_bit_depth(header: bytes | memoryview) -> int | None:
    """The sample depth (9..15) a 16-bit file declares, or None when it declares none (or 16, or is not
    16-bit): a PNG's sBIT chunk (significant bits; the largest of its colour channels) or a TIFF's
    MaxSampleValue tag (281: the largest value used, so its bit length). Never raises."""
    try:
        if header[:8] == b"\x89PNG\r\n\x1a\n":
            depth = _png_significant_bits(header)
        elif header[:4] in (b"II*\x00", b"MM\x00*"):
            depth = _tiff_max_sample_bits(header)
        else:
            return None
    except (struct.error, IndexError, ValueError):
        return None
    return depth if depth is not None and MIN_BIT_DEPTH < depth < WORD_BITS else None


def file_bit_depth(image: np.ndarray, declared: int | None) -> tuple[int, str]:
    """(depth, how) for a 16-bit image whose file declares `declared` bits (None: nothing declared).

    A TIFF's MaxSampleValue says where the values end, so it is the depth. A PNG's sBIT says how many
    bits were significant, but the PNG standard has writers scale the samples up to the full 16 bits
    (libpng does); many camera tools store them unscaled instead. The values tell which: unscaled
    d-bit data never exceeds 2**d - 1, while scaled data does for any picture brighter than 1/16 of
    white. So a declared depth is used when the values fit in it, else the data fills the word (16)."""
    if declared is None:
        return WORD_BITS, "word"
    if int(image.max()) <= (1 << declared) - 1:
        return declared, "file"
    return WORD_BITS, "word"


def _png_significant_bits(data: bytes | memoryview) -> int | None:
    """sBIT of a 16-bit PNG (the largest colour channel's, alpha left out), or None."""
    if data[24] != 16:                                   # IHDR bit depth
        return None
    colour = data[25]
    channels = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(colour, 0)   # colour channels (alpha not counted)
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = bytes(data[pos + 4:pos + 8])
        if kind == b"sBIT" and channels and length >= channels:
            return max(data[pos + 8:pos + 8 + channels])
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def _tiff_max_sample_bits(data: bytes | memoryview) -> int | None:
    """The bit length of a classic TIFF's MaxSampleValue (tag 281) when its samples are 16-bit, or None."""
    end = "<" if data[:2] == b"II" else ">"
    offset = struct.unpack(end + "I", data[4:8])[0]
    count = struct.unpack(end + "H", data[offset:offset + 2])[0]
    bits, max_value = None, None
    for k in range(min(count, 4096)):
        at = offset + 2 + k * 12
        tag, kind, n = struct.unpack(end + "HHI", data[at:at + 8])
        if kind != 3:                                    # SHORT; one value read (all samples alike)
            continue
        value_at = at + 8 if n <= 2 else struct.unpack(end + "I", data[at + 8:at + 12])[0]
        value = struct.unpack(end + "H", data[value_at:value_at + 2])[0]
        if tag == 258:
            bits = value
        elif tag == 281:
            max_value = value
    if bits != WORD_BITS or max_value is None or max_value <= 0:
        return None
    return int(max_value).bit_length()
