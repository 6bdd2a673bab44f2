"""Image encodings used on disk. JPEG for composites, PNG for masks, 16-bit PNG for depth (never lossy)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# zlib level 1: depth and mask PNGs stay lossless; higher levels cost several times the time for ~10% less space.
PNG_LEVEL = 1


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(arr: np.ndarray) -> bytes:
    """PNG of an (H,W) uint8, (H,W,3) uint8, (H,W,4) uint8 or (H,W) uint16 array."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint16:
        arr = arr.astype("<u2", copy=False)  # Pillow maps little-endian uint16 to mode I;16
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Any Pillow image -> (H,W,3) uint8. 16-bit grayscale is scaled down, alpha dropped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.float32)
        peak = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode == "F":
        a = np.asarray(img)
        a = np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def decode_rgb(data: bytes) -> np.ndarray:
    return to_rgb_uint8(decode_image(data))


def decode_gray(data: bytes) -> np.ndarray:
    """(H,W) uint8 from an 8-bit image (a mask); other modes are converted to L."""
    img = decode_image(data)
    if img.mode != "L":
        img = img.convert("L")
    return np.asarray(img)


def encode_depth_png(depth: np.ndarray, scale: float) -> bytes:
    """Depth (H,W) float in its unit -> 16-bit PNG holding round(depth / scale); 0 stays 'unknown'."""
    q = np.clip(np.rint(np.asarray(depth, dtype=np.float64) / scale), 0, 65535).astype(np.uint16)
    return encode_png(q)


def decode_depth_png(data: bytes) -> np.ndarray:
    """16-bit PNG -> (H,W) uint16 raw values (multiply by the dataset's depth scale for the unit)."""
    img = decode_image(data)
    a = np.asarray(img)
    if a.dtype != np.uint16:
        a = a.astype(np.uint16)
    return a
