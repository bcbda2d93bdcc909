"""COCO run-length encoding through pycocotools, pure functions.

Masks are binarised (any non-zero pixel is foreground) before encoding, and handed to pycocotools in
Fortran order, which is what its encoder reads. ``counts`` is kept as a UTF-8 string so RLEs are JSON
and Parquet friendly; both string and bytes ``counts`` are accepted on input.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from pycocotools import mask as mask_utils


class RLE(TypedDict):
    size: list[int]  # [height, width]
    counts: str


class RLEError(ValueError):
    """An RLE is malformed or its size disagrees with the frame it belongs to."""


def encode(mask: np.ndarray) -> RLE:
    """Compressed COCO RLE of a 2-D mask (binarised: non-zero is foreground)."""
    if mask.ndim != 2:
        raise RLEError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    return encode_many(mask[None])[0]


def encode_many(masks: np.ndarray) -> list[RLE]:
    """Compressed COCO RLEs of a stack of (N, H, W) masks (binarised), in one pycocotools call."""
    if masks.ndim != 3:
        raise RLEError(f"masks must be 3-D (N, H, W), got shape {masks.shape}")
    binary = np.asfortranarray((masks != 0).astype(np.uint8).transpose(1, 2, 0))
    return [
        {"size": [int(coded["size"][0]), int(coded["size"][1])], "counts": coded["counts"].decode("ascii")}
        for coded in mask_utils.encode(binary)
    ]


def decode(rle: RLE | dict, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean (H, W) mask of a compressed COCO RLE; checks ``size`` against ``expected_size``."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise RLEError(f"RLE must have 'size' [h, w] and 'counts', got {rle!r:.120}") from exc
    if expected_size is not None and (height, width) != tuple(expected_size):
        raise RLEError(f"RLE size {[height, width]} disagrees with frame size {list(expected_size)}")
    if isinstance(counts, list):
        coded = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        coded = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    try:
        return mask_utils.decode(coded).astype(bool)
    except Exception as exc:  # pycocotools raises bare Exceptions on corrupt counts
        raise RLEError(f"RLE counts cannot be decoded: {exc}") from exc


def area(rle: RLE | dict) -> int:
    """Foreground pixel count without decoding."""
    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]}
    return int(mask_utils.area(coded))
