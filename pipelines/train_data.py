"""The training-sample pipeline of ``vrseg train``: dataset readers -> sample plan -> Ray Data decode -> shards.

Reads top to bottom as the data flows:

1. ``read_catalog`` (driver, before any worker starts): every source of the config is opened with its
   ``pipelines.formats`` reader; locations that do not exist and videos missing from ``videos_uri`` are
   errors naming the config key and the path. RefVOS sources contribute their expressions that have a
   target, TSG sources their moments.
2. ``sample_dataset``: a Ray Data dataset of global sample indices (no read tasks: the index table lives
   in the object store), mapped by a fixed pool of ``SampleBuilder`` CPU actors. Sample ``i`` is drawn
   with ``numpy.random.default_rng([seed, i])``: a source by mixture weight, then an item of it, so a
   sample is the same whichever actor builds it, and a resumed run continues the index sequence.
3. ``SampleBuilder`` decodes and resizes (decord through ``actors.decode.VideoDecoder`` for video files,
   PIL for JPEG frame folders) and rasterises the masks, all on the data CPUs, never in the training loop.
   Decoded frames are cached per actor (``data.frame_cache_mb``, 0: off; ``pipelines.frame_cache``): the
   first sample of a video at an output size decodes the whole video at that size, forward once, into a
   ``DecodedFrameCache`` entry keyed by (source, video id, size), and every later sample of that video and
   size indexes it, so a small corpus sampled many times is decoded about once per video, size and actor
   instead of once per sample; the least recently used videos are evicted past the budget. JPEG folders are
   cached the same way (every JPEG of the video read and resized once). A video's frame count, size and
   frame rate are kept per actor too, so a sample served from the cache opens no decoder. Samples are the
   same bytes with the cache and without it: decord scales each decoded picture on its own in its filter
   graph and PIL resizes each JPEG on its own, so frame i at size S does not depend on which frames were
   decoded with it (measured on the procedural corpora and on a 8-frame-GOP, B-frame mp4, odd sizes and
   decord's narrow-width workaround included; ``tests/test_frame_cache.py`` compares whole rows). A video
   larger than the whole budget at a size is read by random access as without the cache, evicting nothing.
4. The trainer splits the dataset across workers (``ray.train.get_dataset_shard``) and turns batches
   into ``TrainSample``s (``pipelines.train.train_samples``). This module imports no deep-learning
   library, so the decode actors start fast.

Sample contents (MomentSeg 3.2.1, Eq. 4-5):

- RefVOS: an expression, L low-resolution frames uniformly spread over the video (temporal tokens) and
  N high-resolution *consecutive* frames from a stretch where the target is present, with their masks.
  Choice where the paper is vague: a present frame p is drawn uniformly and the N-frame window is placed
  at a random offset so that it contains p (clipped to the video); frames of the window where the target
  happens to be absent keep their empty masks as targets.
- TSG: a query, L low-resolution frames and per-frame labels for the ``[FIND]`` loss: frame i is inside
  the moment when its centre time ``(i + 0.5) / fps`` lies in ``[start, end]``; every frame is in Omega.
  With ``data.refvos_find`` a RefVOS sample carries ``[FIND]`` labels too: low-res frame i is positive when
  the target is visible in it.
- Frames are resized to the configured (h, w) / (H, W) without keeping the aspect ratio (the MLLM's
  processor and SAM2 resize to their own grids anyway; masks are resized the same way, nearest).
- L uniform indices are the centres of L equal segments, ``floor((j + 0.5) T / L)``, repeating frames
  when the video has fewer than L (fixed shapes for batching).
- The prompt template variant (MomentSeg Table 16) is drawn per sample.
- SAM2 tracking clips (``objective: sam2_tracking``; SAM2's own video training samples): items are the
  sources' annotated *objects* (every track of every video, whatever expressions name it), since SAM2
  tracks one object per prompt. A clip is ``clip_frames`` consecutive frames starting at a frame where
  the object is visible, drawn uniformly among those with a full clip after them (else the clip is clipped
  to the video's end); the prompt goes on the clip's first frame, of a kind drawn from ``clip_prompts``.
  The object may leave during the clip: its empty masks teach the object-score head. A row's
  ``clip_masks`` are (K, T, H, W) for its K objects: the drawn one and, with ``clip_objects`` > 1, up to
  ``clip_objects - 1`` others visible on the first frame, each with its own prompt kind (``prompt``: the K
  kinds joined by commas), as SAM2 training tracks several objects of a clip from one encoding of its frames.
  With ``clip_cond_frames`` n > 1, the clip also gets 0 to n - 1 (uniform) extra conditioning frames at
  distinct random positions after its first (SAM2.1's ``rand_init_cond_frames_for_train``), the same for
  all of its objects: ``clip_cond`` (T,) uint8 marks them, and their ground-truth masks are their prompts.
  With ``clip_prompt_frame: any`` the prompt goes on a frame drawn among all the object's visible frames and
  the window around it (``clip_window_around``; ``clip_prompt_frame`` is its position): tracking runs forward
  from it and backward to the clip's start, as BAP's two passes run from their anchor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from PIL import Image

from actors import rle as rle_codec
from actors.config import ConfigError
from actors.decode import VideoDecoder
from actors.model.prompts import FIND_ANSWERS
from actors.uri import filesystem_for, join, redact
from pipelines.formats import Dataset, Expression, Moment, RLETrack, VideoRecord, read_dataset
from pipelines.frame_cache import DecodedFrameCache
from pipelines.train_config import SampleConfig, SourceConfig, TrainConfig

MAX_DRAWS = 64  # items tried for one sample before giving up (RefVOS items whose target is never visible)
DECODE_CHUNK = 32  # frames decoded per call when the frame cache decodes a whole video


# ------------------------------------------------------------------------------------------ catalog
@dataclass(frozen=True)
class RefVOSItem:
    video_id: str
    expression: Expression


@dataclass(frozen=True)
class TSGItem:
    moment: Moment


@dataclass
class SourceCatalog:
    """One source: its config, its videos (RefVOS) and the items samples are drawn from."""

    name: str
    config: SourceConfig
    items: list[RefVOSItem | TSGItem]
    videos: dict[str, VideoRecord] = field(default_factory=dict)

    def video_uri(self, video_id: str) -> str | None:
        if self.config.videos_uri is None:
            return None
        return join(self.config.videos_uri, f"{video_id}{self.config.video_ext}")


@dataclass
class Catalog:
    """All sources and their normalised mixture weights."""

    sources: list[SourceCatalog]
    weights: np.ndarray

    def summary(self) -> dict[str, int]:
        return {source.name: len(source.items) for source in self.sources}


def _require_exists(uri: str, options: Mapping[str, Any], key: str) -> None:
    fs, path = filesystem_for(uri, options)
    if not fs.exists(path):
        raise ConfigError(f"{key}: {redact(uri)} does not exist")


def _check_videos(name: str, source: SourceConfig, video_ids: Sequence[str]) -> None:
    """Every needed ``<videos_uri>/<id><ext>`` exists (one listing of the folder, not one request per video)."""
    key = f"sources.{name}.videos_uri"
    assert source.videos_uri is not None
    _require_exists(source.videos_uri, source.storage_options, key)
    fs, root = filesystem_for(source.videos_uri, source.storage_options)
    prefix = root.rstrip("/") + "/"
    present = {fs._strip_protocol(p)[len(prefix):] for p in fs.find(root)}  # noqa: SLF001 - find may keep the protocol
    missing = sorted({v for v in video_ids if f"{v}{source.video_ext}" not in present})
    if missing:
        shown = ", ".join(redact(join(source.videos_uri, f"{v}{source.video_ext}")) for v in missing[:5])
        raise ConfigError(f"{key}: {len(missing)} videos do not exist, e.g. {shown}")


def object_expression(obj_id: int) -> Expression:
    """An annotated object track as a single-object expression (SAM2 tracking clips)."""
    return Expression(expr_id=f"object {obj_id}", text=f"object {obj_id}", obj_ids=(obj_id,))


def _object_items(videos: Mapping[str, VideoRecord]) -> list[RefVOSItem | TSGItem]:
    """One item per annotated object track (SAM2 tracking clips)."""
    return [RefVOSItem(vid, object_expression(obj)) for vid, video in videos.items() for obj in sorted(video.tracks)]


def _read_source(name: str, source: SourceConfig, objective: str) -> SourceCatalog:
    _require_exists(source.uri, source.storage_options, f"sources.{name}.uri")
    dataset: Dataset = read_dataset(source.format, source.uri, source.storage_options, source.split)
    if source.task == "tsg":
        items: list[RefVOSItem | TSGItem] = [TSGItem(m) for m in dataset.moments]
        video_ids = [m.video_id for m in dataset.moments]
        videos: dict[str, VideoRecord] = {}
    else:
        videos = {vid: v for vid, v in dataset.videos.items() if v.tracks}
        items = (_object_items(videos) if objective == "sam2_tracking" else
                 [RefVOSItem(vid, e) for vid, v in videos.items() for e in v.expressions
                  if (e.obj_ids or source.no_target) and (source.kinds is None or e.kind in source.kinds)])
        video_ids = [item.video_id for item in items]
        for video_id in sorted(set(video_ids)):
            if source.videos_uri is None and videos[video_id].frames_uri is None:
                raise ConfigError(f"sources.{name}: video {video_id!r} has no frame folder; set videos_uri")
    if not items:
        what = "moments" if source.task == "tsg" else "expressions" if source.no_target else "expressions with target masks"
        if source.kinds is not None:
            what += f" of kinds {source.kinds}"
        raise ConfigError(f"sources.{name}: {redact(source.uri)} holds no {what}")
    if source.videos_uri is not None:
        _check_videos(name, source, video_ids)
    return SourceCatalog(name, source, items, videos)


def read_catalog(config: TrainConfig) -> Catalog:
    """Open every source of ``config`` (driver side); errors name the config key and the path."""
    sources = [_read_source(name, source, config.objective) for name, source in config.sources.items()]
    weights = np.array([s.config.weight for s in sources], dtype=np.float64)
    return Catalog(sources, weights / weights.sum())


# ------------------------------------------------------------------------------------------ planning
def lowres_indices(num_frames: int, count: int) -> np.ndarray:
    """``count`` indices at the centres of ``count`` equal segments of the video (repeats when T < count)."""
    if num_frames < 1:
        raise ValueError("video has no frames")
    indices = np.floor((np.arange(count) + 0.5) * num_frames / count).astype(np.int64)
    return np.minimum(indices, num_frames - 1)


def keyframe_window(present: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` consecutive frame indices containing a random frame where ``present`` (T,) is true."""
    frames = np.flatnonzero(present)
    if frames.size == 0:
        raise ValueError("the target is never present")
    anchor = int(rng.choice(frames))
    start = anchor - int(rng.integers(count))
    start = min(max(start, 0), max(len(present) - count, 0))
    return np.minimum(np.arange(start, start + count), len(present) - 1)


def clip_window(present: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` consecutive frame indices starting at a frame where ``present`` (T,) is true: a start with
    ``count`` frames after it when there is one, else the last visible start with the clip clipped to the
    video (frames repeat at the end)."""
    frames = np.flatnonzero(present)
    if frames.size == 0:
        raise ValueError("the target is never present")
    full = frames[frames <= len(present) - count]
    start = int(rng.choice(full)) if full.size else int(frames[-1])
    return np.minimum(np.arange(start, start + count), len(present) - 1)


def clip_window_around(present: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``count`` consecutive frame indices around a frame drawn uniformly among those where ``present`` (T,) is
    true, and that frame's position in them: the window's start is uniform among those keeping it inside the
    clip and the clip inside the video (a video shorter than ``count`` repeats its last frame). Frames before
    the prompt are tracked backward, so an object entering the video is seen absent there."""
    frames = np.flatnonzero(present)
    if frames.size == 0:
        raise ValueError("the target is never present")
    prompt = int(rng.choice(frames))
    last_start = max(0, len(present) - count)
    start = int(rng.integers(max(0, prompt - count + 1), min(prompt, last_start) + 1))
    return np.minimum(np.arange(start, start + count), len(present) - 1), prompt - start


def moment_labels(indices: np.ndarray, fps: float, start: float, end: float) -> np.ndarray:
    """1 where frame ``indices`` have their centre time inside ``[start, end]`` seconds, else 0 (uint8)."""
    centres = (indices.astype(np.float64) + 0.5) / fps
    return ((centres >= start) & (centres <= end)).astype(np.uint8)


def present_frames(record: VideoRecord, expression: Expression) -> np.ndarray:
    """(T,) bool: frames where any target object is visible (RLE areas, no decoding, when tracks are RLE)."""
    present = np.zeros(record.num_frames, dtype=bool)
    for obj_id in expression.obj_ids:
        track = record.tracks[obj_id]
        for t in range(record.num_frames):
            if present[t]:
                continue
            if isinstance(track, RLETrack):
                rle = track.rles[t]
                present[t] = rle is not None and rle_codec.area(rle) > 0
            else:
                mask = track.frame_mask(t)
                present[t] = mask is not None and bool(mask.any())
    return present


# ------------------------------------------------------------------------------------------ frames
def fitted_size(height: int, width: int, box: Sequence[int], keep_aspect: bool = True) -> tuple[int, int]:
    """The (h, w) a (height, width) video's frames are trained at for a ``data.*_size`` box [h, w]: scaled
    to fit within the box with the aspect kept and never enlarged, as inference sizes frames
    (``actors.decode.fit_within`` for the engine's square ``*_side`` boxes, and Qwen2.5-VL's processor keeps
    the aspect too); exactly the box with ``keep_aspect`` false."""
    box_height, box_width = int(box[0]), int(box[1])
    if not keep_aspect:
        return box_height, box_width
    scale = min(box_height / height, box_width / width, 1.0)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resize(frames: np.ndarray, size: Sequence[int], resample: int) -> np.ndarray:
    height, width = int(size[0]), int(size[1])
    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), resample)) for f in frames])


class JpegFrames:
    """Frames of a JPEG folder layout (``<frames_uri>/<name>.jpg``), decoded with PIL and resized."""

    def __init__(self, record: VideoRecord, storage_options: Mapping[str, Any]) -> None:
        if record.frames_uri is None:
            raise ValueError(f"video {record.video_id!r} has no frame folder")
        self.record = record
        self.fs, self.root = filesystem_for(record.frames_uri, storage_options)

    @property
    def num_frames(self) -> int:
        return self.record.num_frames

    @property
    def height(self) -> int:
        return self.record.height

    @property
    def width(self) -> int:
        return self.record.width

    def get(self, indices: np.ndarray, size: Sequence[int]) -> np.ndarray:
        cache: dict[int, np.ndarray] = {}
        for index in sorted(set(indices.tolist())):
            path = f"{self.root}/{self.record.frame_names[index]}.jpg"
            with self.fs.open(path, "rb") as handle:
                image = Image.open(handle).convert("RGB").resize((int(size[1]), int(size[0])), Image.BILINEAR)
            cache[index] = np.asarray(image)
        return np.stack([cache[i] for i in indices.tolist()])

    def close(self) -> None:
        return None


FrameReader = VideoDecoder | JpegFrames
"""What reads one video's frames without the cache: decord for a video file, PIL for a JPEG folder."""


@dataclass(frozen=True)
class VideoInfo:
    """What a sample needs to know of a video before reading frames (its reader's, not its annotations')."""

    num_frames: int
    height: int
    width: int
    fps: float | None  # None for a JPEG folder

    @classmethod
    def of(cls, reader: FrameReader) -> VideoInfo:
        fps = reader.fps if isinstance(reader, VideoDecoder) else reader.record.fps
        return cls(reader.num_frames, reader.height, reader.width, fps)


class CachedFrames:
    """One video's frames for one sample, read through the actor's ``DecodedFrameCache``.

    Its reader (``open_reader``) is opened at most once, and only when something is not known yet: the video's
    ``VideoInfo`` (kept in ``infos`` for the actor's later samples) or frames at a size the cache does not
    hold. ``get`` indexes the whole video decoded at that size, which is the same pixels as the reader's random
    access (decord scales each decoded picture on its own, whatever was decoded before it; PIL resizes each JPEG
    on its own); a video too large for the whole budget is read from the reader as without the cache.
    """

    def __init__(self, source: str, video_id: str, open_reader: Callable[[], FrameReader],
                 infos: dict[tuple[str, str], VideoInfo], cache: DecodedFrameCache) -> None:
        self.source, self.video_id = source, video_id
        self._open_reader = open_reader
        self._infos = infos
        self._cache = cache
        self._reader: FrameReader | None = None

    def _read(self) -> FrameReader:
        if self._reader is None:
            self._reader = self._open_reader()
            self._infos.setdefault((self.source, self.video_id), VideoInfo.of(self._reader))
        return self._reader

    @property
    def info(self) -> VideoInfo:
        info = self._infos.get((self.source, self.video_id))
        return info if info is not None else VideoInfo.of(self._read())

    @property
    def num_frames(self) -> int:
        return self.info.num_frames

    @property
    def height(self) -> int:
        return self.info.height

    @property
    def width(self) -> int:
        return self.info.width

    @property
    def fps(self) -> float:
        fps = self.info.fps
        if fps is None:
            raise ValueError(f"{self.source} video {self.video_id!r}: a JPEG frame folder has no frame rate")
        return fps

    def get(self, indices: np.ndarray, size: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` at ``size`` (h, w) as (N, h, w, 3) uint8, a copy of the cached video's."""
        height, width = int(size[0]), int(size[1])
        nbytes = self.num_frames * height * width * 3
        whole = self._cache.fetch((self.source, self.video_id, (height, width)), nbytes,
                                  lambda: self._decode_all(height, width))
        if whole is None:
            return self._read().get(indices, (height, width))
        return whole[indices]

    def _decode_all(self, height: int, width: int) -> np.ndarray:
        """Every frame at (height, width), decoded forward in chunks into one array (one chunk of extra memory)."""
        reader = self._read()
        frames = np.empty((self.num_frames, height, width, 3), dtype=np.uint8)
        for start in range(0, self.num_frames, DECODE_CHUNK):
            chunk = np.arange(start, min(start + DECODE_CHUNK, self.num_frames))
            frames[chunk] = reader.get(chunk, (height, width))
        return frames

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


class SampleBuilder:
    """Ray Data stage: global sample index -> one decoded, resized training sample (a dict of arrays).

    ``setup`` is the constructor (fetches the catalog once per actor); ``__call__`` builds one row. With
    ``data.frame_cache_mb`` > 0 every frame is read through the actor's ``DecodedFrameCache`` (``cache``).
    """

    def __init__(self, catalog_refs: list[ray.ObjectRef], data: SampleConfig, seed: int,
                 objective: str = "joint") -> None:
        self.catalog: Catalog = ray.get(catalog_refs[0])
        self.data = data
        self.seed = seed
        self.objective = objective
        self._presence: dict[tuple[int, int], np.ndarray] = {}
        self.cache = DecodedFrameCache(data.frame_cache_mb << 20) if data.frame_cache_mb else None
        self._infos: dict[tuple[str, str], VideoInfo] = {}

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        index = int(row["index"])
        draw = index % self.data.fixed_pool if self.data.fixed_pool else index
        rng = np.random.default_rng([self.seed, draw])
        template = int(rng.integers(len(FIND_ANSWERS)))
        for _ in range(MAX_DRAWS):
            source_index = int(rng.choice(len(self.catalog.sources), p=self.catalog.weights))
            source = self.catalog.sources[source_index]
            item_index = int(rng.integers(len(source.items)))
            item = source.items[item_index]
            if isinstance(item, TSGItem):
                return self._tsg(index, source, item, template)
            present = self._present(source_index, item_index, source, item)
            if present.any() and self.objective == "sam2_tracking":
                clip = self._clip(index, source, item, present, rng)
                if clip is not None:
                    return clip
                continue
            if present.any() or not item.expression.obj_ids:
                return self._refvos(index, source, item, present, template, rng)
        raise RuntimeError(f"sample {index}: no item with a visible target (or no-target expression) in {MAX_DRAWS} draws")

    def _present(self, source_index: int, item_index: int, source: SourceCatalog, item: RefVOSItem) -> np.ndarray:
        key = (source_index, item_index)
        if key not in self._presence:
            self._presence[key] = present_frames(source.videos[item.video_id], item.expression)
        return self._presence[key]

    def _frames(self, source: SourceCatalog, video_id: str) -> FrameReader | CachedFrames:
        uri = source.video_uri(video_id)

        def open_reader() -> FrameReader:
            if uri is None:
                return JpegFrames(source.videos[video_id], source.config.storage_options)
            return VideoDecoder(uri, source.config.storage_options)

        if self.cache is None:
            return open_reader()
        return CachedFrames(source.name, video_id, open_reader, self._infos, self.cache)

    def _size(self, frames: FrameReader | CachedFrames, box: Sequence[int]) -> tuple[int, int]:
        return fitted_size(frames.height, frames.width, box, self.data.keep_aspect)

    def _empty(self, index: int, source: SourceCatalog, task: str, video_id: str, text: str, template: int,
               frames: FrameReader | CachedFrames) -> dict[str, Any]:
        """A row with zero placeholders at this video's training sizes (a TSG row keeps its key frames and
        masks empty; rows of one video always have one shape, rows of videos of other aspects differ)."""
        data = self.data
        (h, w), (hh, ww) = self._size(frames, data.lowres_size), self._size(frames, data.keyframe_size)
        return {
            "index": index, "task": task, "source": source.name, "video_id": video_id, "expression": text,
            "template": template,
            "lowres": np.zeros((data.lowres_frames, h, w, 3), np.uint8),
            "key_frames": np.zeros((data.key_frames, hh, ww, 3), np.uint8),
            "masks": np.zeros((data.key_frames, hh, ww), np.uint8),
            "frame_labels": np.zeros(data.lowres_frames, np.uint8),
            "find": task == "tsg",
        }

    def _tsg(self, index: int, source: SourceCatalog, item: TSGItem, template: int) -> dict[str, Any]:
        moment = item.moment
        frames = self._frames(source, moment.video_id)
        try:
            out = self._empty(index, source, "tsg", moment.video_id, moment.text, template, frames)
            indices = lowres_indices(frames.num_frames, self.data.lowres_frames)
            out["lowres"] = frames.get(indices, out["lowres"].shape[1:3])
            out["frame_labels"] = moment_labels(indices, frames.fps, moment.start, moment.end)
        finally:
            frames.close()
        return out

    def _refvos(self, index: int, source: SourceCatalog, item: RefVOSItem, present: np.ndarray, template: int,
                rng: np.random.Generator) -> dict[str, Any]:
        record = source.videos[item.video_id]
        # A no-target expression's window may sit anywhere in the video; its masks are empty.
        anywhere = np.ones_like(present)
        window = keyframe_window(present if item.expression.obj_ids else anywhere, self.data.key_frames, rng)
        frames = self._frames(source, item.video_id)
        try:
            if frames.num_frames != record.num_frames:
                raise ValueError(f"{source.name} video {item.video_id!r}: the video has {frames.num_frames} frames, "
                                 f"the annotations {record.num_frames}")
            out = self._empty(index, source, "refvos", item.video_id, item.expression.text, template, frames)
            indices = lowres_indices(record.num_frames, self.data.lowres_frames)
            out["lowres"] = frames.get(indices, out["lowres"].shape[1:3])
            out["key_frames"] = frames.get(window, out["key_frames"].shape[1:3])
        finally:
            frames.close()
        masks = np.stack([record.target_mask(item.expression, int(t)).astype(np.uint8) for t in window])
        out["masks"] = _resize(masks, out["key_frames"].shape[1:3], Image.NEAREST)
        if self.data.refvos_find:
            out["frame_labels"], out["find"] = present[indices].astype(np.uint8), True
        return out


    def _clip(self, index: int, source: SourceCatalog, item: RefVOSItem, present: np.ndarray,
              rng: np.random.Generator) -> dict[str, Any] | None:
        """The clip row, or ``None`` when the drawn object vanishes from the first frame at ``clip_size`` (a
        few pixels at the video's size; the caller draws again). Other objects that vanish so are left out."""
        record = source.videos[item.video_id]
        if self.data.clip_prompt_frame == "first":
            window, at = clip_window(present, self.data.clip_frames, rng), 0
        else:
            window, at = clip_window_around(present, self.data.clip_frames, rng)
        prompt = self._prompt_kind(rng)
        frames = self._frames(source, item.video_id)
        try:
            if frames.num_frames != record.num_frames:
                raise ValueError(f"{source.name} video {item.video_id!r}: the video has {frames.num_frames} frames, "
                                 f"the annotations {record.num_frames}")
            clip = frames.get(window, self._size(frames, self.data.clip_size))
        finally:
            frames.close()
        expressions = [item.expression, *self._companions(record, item, int(window[at]), rng)]
        masks = [_resize(np.stack([record.target_mask(e, int(t)).astype(np.uint8) for t in window]), clip.shape[1:3],
                         Image.NEAREST) for e in expressions]
        prompts = [prompt, *(self._prompt_kind(rng) for _ in expressions[1:])]
        kept = [k for k, m in enumerate(masks) if m[at].any()]
        if not kept or kept[0] != 0:
            return None
        conditioning = np.zeros(len(window), dtype=np.uint8)
        if self.data.clip_cond_frames > 1:  # no draw otherwise: one-prompt runs sample as they always did
            extra = int(rng.integers(0, self.data.clip_cond_frames))
            others = np.array([t for t in range(len(window)) if t != at])
            conditioning[rng.choice(others, size=extra, replace=False)] = 1
        return {"index": index, "task": "clip", "source": source.name, "video_id": item.video_id,
                "expression": item.expression.text, "template": 0, "clip_frames": clip,
                "clip_masks": np.stack([masks[k] for k in kept]), "prompt": ",".join(prompts[k] for k in kept),
                "clip_cond": conditioning, "clip_prompt_frame": at}

    def _prompt_kind(self, rng: np.random.Generator) -> str:
        kinds = sorted(self.data.clip_prompts)
        weights = np.array([self.data.clip_prompts[k] for k in kinds], dtype=np.float64)
        return kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]

    def _companions(self, record: VideoRecord, item: RefVOSItem, first: int,
                    rng: np.random.Generator) -> list[Expression]:
        """Up to ``clip_objects - 1`` other objects of the video visible on the clip's first frame, drawn at random."""
        if self.data.clip_objects == 1:
            return []
        others = [object_expression(obj) for obj in sorted(record.tracks) if obj not in item.expression.obj_ids]
        visible = [e for e in others if record.target_mask(e, first).any()]
        picks = rng.permutation(len(visible))[: self.data.clip_objects - 1]
        return [visible[int(i)] for i in picks]


# ------------------------------------------------------------------------------------------ dataset
def sample_dataset(catalog: Catalog, data: SampleConfig, seed: int, start: int, count: int,
                   objective: str = "joint") -> ray.data.Dataset:
    """Samples ``start .. start + count - 1`` as a Ray Data dataset built by ``data.decode_actors`` actors.

    The index blocks (``rows_per_block`` indices each, the remainder spread over the first blocks) are built in
    this process: ``from_items`` runs no Ray task, whereas ``from_arrow`` runs one 1-CPU task per block, which
    never starts when Ray Train builds the dataset (``train.RemainingSamples``) while its workers hold the CPUs.
    """
    if count < 1:
        raise ValueError(f"sample count must be >= 1, got {count}")
    indices = [{"index": index} for index in range(start, start + count)]
    return ray.data.from_items(indices, override_num_blocks=-(-count // data.rows_per_block)).map(
        SampleBuilder,
        fn_constructor_kwargs={"catalog_refs": [ray.put(catalog)], "data": data, "seed": seed,
                               "objective": objective},
        compute=ray.data.ActorPoolStrategy(size=data.decode_actors),
        num_cpus=data.cpus_per_actor,
    )

