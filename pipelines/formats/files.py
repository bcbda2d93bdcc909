"""File access shared by the readers and writers: fsspec locations, JSON, PNG/JPEG, key checks.

A ``Location`` is one file or folder at an fsspec URI (plain path, ``file://``, ``s3://``); it keeps
the URI as given so every error names the file the user pointed at. All failures of malformed input
raise ``FormatError`` naming the file, and the video and key where they are known.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fsspec import AbstractFileSystem
from PIL import Image, UnidentifiedImageError

from actors.uri import filesystem_for, join
from pipelines.formats.model import FormatError

T = TypeVar("T")
R = TypeVar("R")

#: Frames of one video, in order, as (H, W, 3) uint8 RGB arrays; called once per video by writers.
FrameSource = Callable[[str], Iterable[np.ndarray]]

_JPEG_QUALITY = 95
_REMOTE_WORKERS = 8


@dataclass(frozen=True)
class Location:
    """A file or folder: the filesystem serving it, its path there, and its URI for messages."""

    fs: AbstractFileSystem
    path: str
    uri: str

    def child(self, *parts: str) -> Location:
        return Location(self.fs, join(self.path, *parts), join(self.uri, *parts))

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))

    def read_bytes(self) -> bytes:
        try:
            return self.fs.cat_file(self.path)
        except FileNotFoundError:
            raise FormatError(self.uri, "file not found") from None

    def write_bytes(self, data: bytes) -> None:
        if is_local(self.fs):  # object stores have no folders to create
            self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(self.path, data)

    def read_json(self) -> Any:
        raw = self.read_bytes()
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise FormatError(self.uri, f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise FormatError(self.uri, f"not UTF-8 text: {exc}") from None

    def write_json(self, value: Any) -> None:
        self.write_bytes(json.dumps(value, separators=(",", ":")).encode("utf-8"))

    def relative(self, path: str) -> str:
        """``path`` (as listed by ``fs``) relative to this location."""
        base = self.path.rstrip("/") + "/"
        stripped = self.fs._strip_protocol(path)  # noqa: SLF001 - listing paths come back with or without protocol
        return stripped[len(base):] if stripped.startswith(base) else stripped

    def list_files(self) -> list[str]:
        """Every file below this folder, as paths relative to it (empty when the folder is absent)."""
        if not self.fs.exists(self.path):
            return []
        return sorted(self.relative(p) for p in self.fs.find(self.path))


def location(uri: str, storage_options: Mapping[str, Any] | None = None) -> Location:
    fs, path = filesystem_for(uri, storage_options)
    return Location(fs, path, uri.rstrip("/") if len(uri) > 1 else uri)


def parallel_map(fn: Callable[[T], R], items: Sequence[T], fs: AbstractFileSystem) -> list[R]:
    """``map`` that overlaps requests on object stores (one thread per request, up to 8); plain on disk."""
    if is_local(fs) or len(items) < 2:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=_REMOTE_WORKERS) as pool:
        return list(pool.map(fn, items))


def is_local(fs: AbstractFileSystem) -> bool:
    protocol = fs.protocol
    return "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


def require(mapping: Any, key: str, file: str, video: str | None, what: str = "entry") -> Any:
    """``mapping[key]``, or a FormatError naming the file, the video and the missing key."""
    if not isinstance(mapping, Mapping):
        raise FormatError(file, f"{what} must be a JSON object, got {type(mapping).__name__}", video, key)
    if key not in mapping:
        raise FormatError(file, f"{what} has no {key!r}", video, key)
    return mapping[key]


def require_type(value: Any, kind: type | tuple[type, ...], file: str, video: str | None, key: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _as_tuple(kind):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise FormatError(file, f"expected {names}, got {type(value).__name__} {value!r:.60}", video, key)
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def image_error(exc: Exception) -> str:
    """Why PIL could not read an image, without the object reprs (memory addresses) PIL puts in its
    messages, so the same file gives the same message in every process."""
    return "not an image file PIL can identify" if isinstance(exc, UnidentifiedImageError) else str(exc)


def decode_label_png(data: bytes, file: str, video: str | None, key: str | None) -> np.ndarray:
    """A palette or single-channel PNG as a 2-D uint8 array of its indices / grey values."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise FormatError(file, f"not a readable PNG: {image_error(exc)}", video, key) from None
    if image.mode not in ("P", "L", "1"):
        raise FormatError(file, f"expected a palette or single-channel PNG, got mode {image.mode}", video, key)
    return np.asarray(image, dtype=np.uint8)


def check_size(array: np.ndarray, size: tuple[int, int], file: str, video: str | None, key: str | None) -> None:
    if array.shape[:2] != tuple(size):
        raise FormatError(file, f"image size {list(array.shape[:2])} disagrees with frame size {list(size)}", video, key)


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A single-channel PNG with 255 where ``mask`` is non-zero and 0 elsewhere."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return buffer.getvalue()


def image_size(loc: Location, video: str | None = None) -> tuple[int, int]:
    """(height, width) of an image from its header."""
    try:
        with loc.fs.open(loc.path, "rb") as handle:
            width, height = Image.open(handle).size
    except FileNotFoundError:
        raise FormatError(loc.uri, "file not found", video) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise FormatError(loc.uri, f"not a readable image: {image_error(exc)}", video) from None
    return int(height), int(width)


def write_jpeg_frames(folder: Location, video_id: str, frame_names: Sequence[str],
                      frames: Iterable[np.ndarray], size: tuple[int, int]) -> None:
    """``<folder>/<name>.jpg`` for each frame, consumed one at a time; the count and size must match."""
    count = 0
    for frame in frames:
        if count >= len(frame_names):
            raise ValueError(f"video {video_id!r}: frame source yields more than {len(frame_names)} frames")
        if frame.shape != (size[0], size[1], 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"video {video_id!r} frame {count}: expected uint8 {(size[0], size[1], 3)}, "
                f"got {frame.dtype} {frame.shape}"
            )
        folder.child(f"{frame_names[count]}.jpg").write_bytes(encode_jpeg(frame))
        count += 1
    if count != len(frame_names):
        raise ValueError(f"video {video_id!r}: frame source yields {count} frames, the record has {len(frame_names)}")
