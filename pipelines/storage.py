"""Where labeling outputs live: atomic writes, per-video commit markers, resume, safe keys, retries.

Every location is an fsspec URI (``actors.uri``). Guarantees (ARCHITECTURE step 7, issue 5 "Outputs"
and "Reliability"):

- Atomic writes. A file under the output root is either absent or complete. On a local filesystem the
  bytes go to a hidden temporary name in the same directory and are renamed into place (``os.rename``
  is atomic within a filesystem). Object stores have no rename, but a single PUT (and a completed
  multipart upload) makes an object visible whole, so objects are written in one call, never appended.
- Commit markers. A video's outputs are visible once ``_committed/<video_key>.json`` exists; it is
  written last and lists every file of the video with its size and SHA-256, plus a checksum of that
  list. Readers and resume go by markers only: files of a video without a marker (a crash mid-video)
  are invisible and are overwritten under the same deterministic names when the video is redone.
- Safe keys. ``video_key`` turns any ``video_id`` into one path segment that cannot leave the output
  root (no ``/``, ``\\``, ``..``, control characters), deterministically and injectively; every
  relative path is checked before it is joined to the root.
- Retries. Transient storage errors (HTTP 5xx/429 / SlowDown, connection resets, timeouts) are retried
  with exponential backoff and jitter on top of the filesystem's own retries; permanent ones
  (missing, denied, invalid) fail at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fsspec.implementations.local import LocalFileSystem

from actors.retry import RetryPolicy, is_transient, with_retries
from actors.uri import filesystem_for, join, redact

T = TypeVar("T")
log = logging.getLogger(__name__)

COMMIT_DIR = "_committed"
MARKER_FORMAT = 1
RUN_RECORD = "run.json"  # the run's record under the output root (``vrseg label``, ``vrseg ground``)



class StorageError(Exception):
    """A storage operation failed for good; the message names the (redacted) URI."""

    def __init__(self, uri: str, message: str) -> None:
        self.uri = redact(uri)
        self.message = message
        super().__init__(f"{self.uri}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.uri, self.message))


# ---------------------------------------------------------------------------------------------- keys
_SAFE_CHAR = re.compile(r"[A-Za-z0-9_.-]")
_MAX_KEY_CHARS = 150  # well under S3's 1024-byte keys and the 255-byte file names of local filesystems
_HASHED_PREFIX_CHARS = 100


def video_key(video_id: str) -> str:
    """A path segment for ``video_id``: deterministic, injective, never leaving the output root.

    Letters, digits, ``_``, ``-`` and ``.`` (except a leading one) are kept; every other character is
    percent-encoded as its UTF-8 bytes (``%2F`` for ``/``; lone surrogates from invalid UTF-8 are
    encoded with ``surrogatepass`` so they stay distinct). Percent-encoding over a fixed alphabet is
    decodable, hence injective. A leading ``.`` is encoded, so no key is ``.``, ``..`` or hidden.
    Keys longer than 150 characters become the first 100 encoded characters, ``~`` and the SHA-256
    of the id (128 bits, 32 hex digits); ``~`` never appears otherwise, so hashed and plain keys
    cannot collide, and hashed keys collide only with a SHA-256 collision.
    """
    if not isinstance(video_id, str) or video_id == "":
        raise ValueError(f"video_id must be a non-empty string, got {video_id!r}")
    parts = []
    for position, char in enumerate(video_id):
        if _SAFE_CHAR.fullmatch(char) and not (char == "." and position == 0):
            parts.append(char)
        else:
            parts.append("".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass")))
    key = "".join(parts)
    if len(key) <= _MAX_KEY_CHARS:
        return key
    digest = hashlib.sha256(video_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{key[:_HASHED_PREFIX_CHARS]}~{digest}"


def check_relative(relpath: str) -> str:
    """``relpath`` if it is a clean relative path (``a/b.parquet``) that stays under the root; else ValueError."""
    if not isinstance(relpath, str) or not relpath:
        raise ValueError(f"output path must be a non-empty string, got {relpath!r}")
    if relpath.startswith("/") or "\\" in relpath or "://" in relpath:
        raise ValueError(f"output path must be relative with '/' separators: {relpath!r}")
    for segment in relpath.split("/"):
        if segment in ("", ".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in segment):
            raise ValueError(f"output path has an empty, '.', '..' or control-character segment: {relpath!r}")
    return relpath


# ---------------------------------------------------------------------------------------------- markers
@dataclass(frozen=True)
class WrittenFile:
    """A file written under the output root: path relative to it, size in bytes, SHA-256 hex digest."""

    path: str
    size: int
    sha256: str


def _files_checksum(files: Sequence[WrittenFile]) -> str:
    listing = "\n".join(f"{f.path}\t{f.size}\t{f.sha256}" for f in sorted(files, key=lambda f: f.path))
    return hashlib.sha256(listing.encode()).hexdigest()


@dataclass(frozen=True)
class CommitRecord:
    """The content of a video's commit marker."""

    video_id: str
    video_key: str
    files: tuple[WrittenFile, ...]
    checksum: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": MARKER_FORMAT,
                "video_id": self.video_id,
                "video_key": self.video_key,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
                "checksum": self.checksum,
                "extra": dict(self.extra),
            },
            sort_keys=True,
            ensure_ascii=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> CommitRecord:
        """Parse and check a marker; ``StorageError`` naming ``source`` if it is malformed or inconsistent."""
        try:
            raw = json.loads(data)
            files = tuple(WrittenFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in raw["files"])
            record = cls(str(raw["video_id"]), str(raw["video_key"]), files, str(raw["checksum"]),
                         dict(raw.get("extra") or {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(source, f"malformed commit marker: {exc!r}") from exc
        if record.checksum != _files_checksum(record.files):
            raise StorageError(source, "commit marker checksum does not match its file list")
        if record.video_key != video_key(record.video_id):
            raise StorageError(source, f"commit marker key {record.video_key!r} is not the key of {record.video_id!r}")
        return record


# ---------------------------------------------------------------------------------------------- store
class OutputStore:
    """The output root of a labeling run: atomic writes, commit markers, resume (see module docstring)."""

    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.root = root.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.fs, self._root_path = filesystem_for(self.root, storage_options)
        self._root_path = self._root_path.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)

    def uri(self, relpath: str) -> str:
        """The URI of ``relpath`` under the root."""
        return join(self.root, check_relative(relpath))

    def _path(self, relpath: str) -> str:
        return f"{self._root_path}/{check_relative(relpath)}"

    def _call(self, what: str, relpath: str, operation: Callable[[], T]) -> T:
        try:
            return with_retries(operation, f"{what} {self.uri(relpath)}", self.retry)
        except FileNotFoundError:
            raise
        except Exception as exc:
            if isinstance(exc, OSError) or is_transient(exc):
                raise StorageError(self.uri(relpath), f"{what} failed: {exc!r}") from exc
            raise

    # ------------------------------------------------------------------ files
    def write_bytes(self, relpath: str, data: bytes) -> WrittenFile:
        """Write ``data`` to ``relpath`` atomically (see module docstring); returns its size and hash."""
        self._call("write", relpath, lambda: self._atomic(self._path(relpath), lambda target: self.fs.pipe_file(target, data)))
        return WrittenFile(relpath, len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, local_path: str, relpath: str) -> WrittenFile:
        """Copy the local file ``local_path`` to ``relpath`` atomically (objects: one PUT or multipart upload)."""
        digest, size = hashlib.sha256(), 0
        with open(local_path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        self._call("put", relpath, lambda: self._atomic(self._path(relpath), lambda target: self.fs.put_file(local_path, target)))
        return WrittenFile(relpath, size, digest.hexdigest())

    def _atomic(self, path: str, write: Callable[[str], object]) -> None:
        """``write(target)`` so that ``path`` appears complete or not at all."""
        if not self._local:
            write(path)  # one PUT / completed multipart upload: the object appears whole
            return
        parent, name = path.rsplit("/", 1)
        self.fs.makedirs(parent, exist_ok=True)
        temporary = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
        try:
            write(temporary)
            self.fs.mv(temporary, path)
        finally:
            if self.fs.exists(temporary):
                self.fs.rm_file(temporary)

    def read_bytes(self, relpath: str) -> bytes:
        return self._call("read", relpath, lambda: self.fs.cat_file(self._path(relpath)))

    def exists(self, relpath: str) -> bool:
        return self._call("exists", relpath, lambda: self.fs.exists(self._path(relpath)))

    # ------------------------------------------------------------------ commits
    @staticmethod
    def marker_path(video_id: str) -> str:
        return f"{COMMIT_DIR}/{video_key(video_id)}.json"

    def commit(
        self, video_id: str, files: Sequence[WrittenFile], extra: Mapping[str, Any] | None = None
    ) -> CommitRecord:
        """Write ``video_id``'s commit marker (after all of ``files`` are written): the video becomes visible."""
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ValueError(f"video {video_id!r}: commit lists a file twice: {sorted(paths)}")
        for path in paths:
            check_relative(path)
        record = CommitRecord(video_id, video_key(video_id), tuple(files), _files_checksum(files), dict(extra or {}))
        self.write_bytes(self.marker_path(video_id), record.to_json())
        return record

    def commit_record(self, video_id: str) -> CommitRecord | None:
        """``video_id``'s marker, or None when the video is not committed."""
        relpath = self.marker_path(video_id)
        try:
            data = self.read_bytes(relpath)
        except FileNotFoundError:
            return None
        return CommitRecord.from_json(data, self.uri(relpath))

    def _marker_names(self) -> list[str]:
        """The commit markers' paths: one listing, bypassing fsspec's cache (markers are written by other
        processes, the pipeline's actors)."""
        directory = f"{self._root_path}/{COMMIT_DIR}"
        self.fs.invalidate_cache(directory)
        what = f"list {join(self.root, COMMIT_DIR)}"
        try:
            names = with_retries(lambda: self.fs.find(directory), what, self.retry)
        except FileNotFoundError:
            return []
        except Exception as exc:
            if isinstance(exc, OSError) or is_transient(exc):
                raise StorageError(join(self.root, COMMIT_DIR), f"listing commit markers failed: {exc!r}") from exc
            raise
        # Keys never start with "." (video_key encodes it), so dot-names are interrupted temporary writes.
        return [n for n in names if n.endswith(".json") and not n.rsplit("/", 1)[-1].startswith(".")]

    def committed_keys(self) -> set[str]:
        """The ``video_key`` of every committed video, from the listing alone (no marker is read): what a
        resumed job skips, at a cost that does not grow with the markers' contents."""
        return {name.rsplit("/", 1)[-1].removesuffix(".json") for name in self._marker_names()}

    def committed(self) -> dict[str, CommitRecord]:
        """Every committed video: ``video_id -> CommitRecord`` (one listing, then the markers read in bulk)."""
        markers = self._marker_names()
        if not markers:
            return {}
        # One bulk read (concurrent on object stores); markers whose read failed are re-read one by one
        # with retries, so a transient error costs one request, not the whole listing.
        contents = self.fs.cat(markers, on_error="return")
        records: dict[str, CommitRecord] = {}
        for name in markers:
            source = join(self.root, COMMIT_DIR, name.rsplit("/", 1)[1])
            data = contents.get(name)
            if not isinstance(data, bytes):
                try:
                    data = with_retries(lambda name=name: self.fs.cat_file(name), f"read {source}", self.retry)
                except Exception as exc:
                    if isinstance(exc, OSError) or is_transient(exc):
                        raise StorageError(source, f"reading the commit marker failed: {exc!r}") from exc
                    raise
            record = CommitRecord.from_json(data, source)
            records[record.video_id] = record
        return records

    def pending(self, video_ids: Iterable[str]) -> list[str]:
        """Resume: the ``video_ids`` (in order, first occurrence) that are not committed yet."""
        done = set(self.committed())
        seen: set[str] = set()
        todo = []
        for video_id in video_ids:
            if video_id not in done and video_id not in seen:
                seen.add(video_id)
                todo.append(video_id)
        return todo

    def committed_files(self, video_id: str) -> list[str]:
        """URIs of a committed video's files (empty when it is not committed)."""
        record = self.commit_record(video_id)
        return [self.uri(f.path) for f in record.files] if record else []

    def verify(self, video_id: str) -> bool:
        """Whether ``video_id`` is committed and every listed file exists with the recorded size and hash."""
        record = self.commit_record(video_id)
        if record is None:
            return False
        for written in record.files:
            try:
                data = self.read_bytes(written.path)
            except FileNotFoundError:
                return False
            if len(data) != written.size or hashlib.sha256(data).hexdigest() != written.sha256:
                return False
        return True

