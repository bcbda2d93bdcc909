"""Predictions as PNGs: the folder layout ``<video>/<expr_id>/<frame>.png`` and the CodaLab zips.

Each PNG is single-channel, 255 on the object and 0 elsewhere (readers take any non-zero pixel as
object, and accept palette PNGs too). In a folder, the prediction of a one-frame record (an image of
RefCOCO or ReasonSeg) may leave out the frame level: ``<image>/<expr_id>.png``. The CodaLab
submissions are the same tree in a zip:

* MeViS: video folders at the root of the zip (``<video>/<expr_id>/<frame>.png``), as the MeViS
  README's ``sample_submission_valid.zip`` shows;
* Ref-YouTube-VOS: under ``Annotations/`` (``Annotations/<video>/<expr_id>/<frame>.png``).

The zip reader accepts both (an ``Annotations/`` prefix on every entry is dropped). Video names may
contain ``/`` (ReVOS); the expression and frame are always the last two path components.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np

from pipelines.formats.files import Location, check_size, decode_label_png, encode_mask_png, location
from pipelines.formats.model import Dataset, FormatError
from pipelines.formats.prediction_store import PredictedMask, PredictionStore

CodaLabLayout = Literal["mevis", "refytvos"]
_ZIP_PREFIX = {"mevis": "", "refytvos": "Annotations/"}


def png_member(prediction: PredictedMask) -> str:
    return f"{prediction.video_id}/{prediction.expr_id}/{prediction.frame_name}.png"


def write_png_predictions(predictions: Iterable[PredictedMask], root_uri: str,
                          storage_options: Mapping[str, Any] | None = None) -> int:
    """Write each prediction as ``<root>/<video>/<expr_id>/<frame>.png``; returns the count."""
    root = location(root_uri, storage_options)
    count = 0
    for prediction in predictions:
        root.child(png_member(prediction)).write_bytes(encode_mask_png(prediction.mask))
        count += 1
    return count


def write_codalab_zip(predictions: Iterable[PredictedMask], uri: str, layout: CodaLabLayout,
                      storage_options: Mapping[str, Any] | None = None) -> int:
    """A CodaLab submission zip (``layout`` "mevis" or "refytvos"); returns the number of PNGs.

    The zip is built in a local temporary file (zip needs a seekable file, object stores are not)
    and then copied to ``uri`` in one put.
    """
    if layout not in _ZIP_PREFIX:
        raise ValueError(f"unknown CodaLab layout {layout!r}; expected one of {sorted(_ZIP_PREFIX)}")
    target = location(uri, storage_options)
    handle, local = tempfile.mkstemp(suffix=".zip")
    os.close(handle)
    count = 0
    try:
        with zipfile.ZipFile(local, "w", compression=zipfile.ZIP_STORED) as archive:
            for prediction in predictions:
                archive.writestr(_ZIP_PREFIX[layout] + png_member(prediction), encode_mask_png(prediction.mask))
                count += 1
        target.fs.put_file(local, target.path)
    finally:
        os.remove(local)
    return count


class _PngLayoutStore(PredictionStore):
    """Shared lookup of the PNG layouts; subclasses index one video and read one member."""

    def __init__(self, uri: str, dataset: Dataset | None) -> None:
        super().__init__(uri, dataset)
        self._indexed: dict[str, dict[str, dict[str, str]]] = {}

    def _index(self, video_id: str) -> dict[str, dict[str, str]]:
        """{expr_id: {frame_name: member}} of one video."""
        if video_id not in self._indexed:
            self._indexed[video_id] = self._list_video(video_id)
        return self._indexed[video_id]

    @abstractmethod
    def _list_video(self, video_id: str) -> dict[str, dict[str, str]]:
        """{expr_id: {frame_name: member}} of one video, read from storage."""

    @abstractmethod
    def _read_member(self, member: str) -> bytes: ...

    @abstractmethod
    def _member_uri(self, member: str) -> str:
        """Where ``member`` is, for error messages."""

    def expressions(self, video_id: str) -> set[str]:
        return set(self._index(video_id))

    def mask(self, video_id: str, expr_id: str, frame: int | str) -> np.ndarray | None:
        frames = self._index(video_id).get(expr_id)
        if not frames:
            return None
        name = frame if isinstance(frame, str) else self._frame_name(video_id, frames, frame)
        member = None if name is None else frames.get(name)
        if member is None:
            return None
        file = self._member_uri(member)
        labels = decode_label_png(self._read_member(member), file, video_id, expr_id)
        expected = self._expected_size(video_id)
        if expected is not None:
            check_size(labels, expected, file, video_id, expr_id)
        return labels != 0

    def foreign_frames(self, video_id: str, expr_id: str) -> list[str]:
        video = self._video(video_id)
        if video is None:
            return []
        known = set(video.frame_names)
        return sorted(name for name in self._index(video_id).get(expr_id, {}) if name not in known)

    def _frame_name(self, video_id: str, frames: dict[str, str], index: int) -> str | None:
        video = self._video(video_id)
        names = video.frame_names if video is not None else sorted(frames)
        return names[index] if 0 <= index < len(names) else None


def _split_member(relative: str) -> tuple[str, str, str] | None:
    """(video, expr_id, frame_name) of ``<video>/<expr_id>/<frame>.png``, None for anything else."""
    parts = relative.rsplit("/", 2)
    if len(parts) != 3 or not parts[2].endswith(".png") or not parts[0]:
        return None
    return parts[0], parts[1], parts[2][: -len(".png")]


class PngFolderPredictions(_PngLayoutStore):
    """``<root>/<video>/<expr_id>/<frame>.png``, listed one video at a time on first use."""

    def __init__(self, root: Location, dataset: Dataset | None) -> None:
        super().__init__(root.uri, dataset)
        self.root = root

    def _list_video(self, video_id: str) -> dict[str, dict[str, str]]:
        video = self._video(video_id)
        single_frame = video.frame_names[0] if video is not None and video.num_frames == 1 else None
        index: dict[str, dict[str, str]] = {}
        for relative in self.root.child(video_id).list_files():
            expr_id, _, file_name = relative.partition("/")
            if file_name.endswith(".png") and "/" not in file_name:
                index.setdefault(expr_id, {})[file_name[: -len(".png")]] = f"{video_id}/{relative}"
            elif not file_name and single_frame is not None and expr_id.endswith(".png"):
                index.setdefault(expr_id[: -len(".png")], {})[single_frame] = f"{video_id}/{relative}"
        return index

    def _read_member(self, member: str) -> bytes:
        return self.root.child(member).read_bytes()

    def _member_uri(self, member: str) -> str:
        return self.root.child(member).uri


class ZipPredictions(_PngLayoutStore):
    """A CodaLab zip (MeViS or Ref-YouTube-VOS layout), indexed once from its directory."""

    def __init__(self, loc: Location, dataset: Dataset | None) -> None:
        super().__init__(loc.uri, dataset)
        self._handle = loc.fs.open(loc.path, "rb")
        try:
            self._archive = zipfile.ZipFile(self._handle)
        except zipfile.BadZipFile as exc:
            self._handle.close()
            raise FormatError(loc.uri, f"not a zip file: {exc}") from None
        names = [n for n in self._archive.namelist() if not n.endswith("/")]
        prefix = "Annotations/" if names and all(n.startswith("Annotations/") for n in names) else ""
        for name in names:
            parsed = _split_member(name[len(prefix):])
            if parsed is not None:
                video_id, expr_id, frame_name = parsed
                self._indexed.setdefault(video_id, {}).setdefault(expr_id, {})[frame_name] = name

    def _list_video(self, video_id: str) -> dict[str, dict[str, str]]:
        return {}  # every video in the zip was indexed on opening

    def _read_member(self, member: str) -> bytes:
        return self._archive.read(member)

    def _member_uri(self, member: str) -> str:
        return f"{self.uri}!{member}"

    def close(self) -> None:
        self._archive.close()
        self._handle.close()
