"""rosbag2 (MCAP) recording of trajectory samples, written and read with the pure-Python ``rosbags`` package.

Samples travel as their CDR bytes (what rclpy serialises and what rosbag2 stores), so a bag written
here opens in ``ros2 bag`` and in any rosbags reader: the message definition of
``mbpl_msgs/msg/TrajectorySample`` is registered with rosbags' type system from the package's .msg
text and stored in the bag.

Layout under ``<run_dir>/bags`` (:class:`SampleStore`), chosen so that a kill -9 never corrupts a
sample that was already acknowledged:

* ``iteration_III/condition_MM/`` — one bag per finished (iteration, condition) batch, its messages in
  sample-index order. It is written into a hidden temporary folder and renamed into place, so it
  either exists complete or not at all;
* ``pending/iteration_III_condition_MM_sample_SS/`` — one small bag per trial of a batch that is not
  finished yet, written the same atomic way the moment its sample arrives. When the batch bag is in
  place the pending bags of that batch are deleted (a crash in between leaves duplicates that
  :meth:`SampleStore.samples` ignores and the next :meth:`SampleStore.close_batch` removes).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import uuid
from collections.abc import Container, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

SAMPLE_TOPIC = "mbpl/samples"
SAMPLE_TYPE = "mbpl_msgs/msg/TrajectorySample"
BAG_VERSION = 9
_PENDING = re.compile(r"^iteration_(\d+)_condition_(\d+)_sample_(\d+)$")
_REPO_MSG_DIR = Path(__file__).resolve().parents[2] / "mbpl_msgs" / "msg"


def _msg_text(name: str) -> str:
    """Text of mbpl_msgs/msg/<name>.msg from the installed share folder, else from the source tree."""
    candidates = []
    prefixes = os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) + [os.environ.get("VIRTUAL_ENV", "")]
    for prefix in prefixes:
        if prefix:
            candidates.append(Path(prefix) / "share" / "mbpl_msgs" / "msg" / f"{name}.msg")
    candidates.append(_REPO_MSG_DIR / f"{name}.msg")
    for path in candidates:
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"mbpl_msgs/msg/{name}.msg not found (looked in {[str(c) for c in candidates]})")


@lru_cache(maxsize=1)
def sample_typestore() -> Typestore:
    """rosbags type store of ROS 2 kilted plus mbpl_msgs/msg/TrajectorySample (from its .msg text)."""
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg(_msg_text("TrajectorySample"), SAMPLE_TYPE))
    return store


def canonical_cdr(raw: bytes) -> bytes:
    """The CDR bytes of one TrajectorySample without trailing bytes past its end.

    rclpy's ``serialize_message`` can return its whole buffer, with stale bytes after the message;
    ROS readers ignore them but strict readers (rosbags) reject them, so bags store the exact message.
    Raises ValueError if ``raw`` is not a little-endian CDR TrajectorySample.
    """
    raw = bytes(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x01":
        raise ValueError("not a little-endian CDR message (bad encapsulation header)")
    store = sample_typestore()
    msgdef = store.get_msgdef(SAMPLE_TYPE)
    try:
        _, end = msgdef.deserialize_cdr_le(raw[4:], 0, msgdef.cls, store)
    except (struct.error, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"not a CDR {SAMPLE_TYPE}: {err}") from err
    return raw[: 4 + end]


def write_bag(path: str | Path, messages: Sequence[tuple[int, bytes]]) -> Path:
    """Write ``messages`` — (timestamp_ns, CDR bytes of a TrajectorySample) — as an MCAP rosbag2 at ``path``.

    Atomic: written into a hidden sibling folder and renamed into place; raises FileExistsError if
    ``path`` exists (a finished bag is never overwritten).
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"bag {path} already exists")
    staging = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        inner = staging / path.name
        with Writer(inner, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP) as writer:
            conn = writer.add_connection(SAMPLE_TOPIC, SAMPLE_TYPE, typestore=sample_typestore())
            for stamp_ns, raw in messages:
                writer.write(conn, int(stamp_ns), canonical_cdr(raw))
        _fsync_tree(inner)
        os.rename(inner, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bag(path: str | Path) -> list[tuple[int, bytes]]:
    """All (timestamp_ns, CDR bytes) of the sample topic of one bag, in recording order."""
    with Reader(Path(path)) as reader:
        conns = [c for c in reader.connections if c.topic == SAMPLE_TOPIC]
        return [(int(stamp), bytes(raw)) for _, stamp, raw in reader.messages(connections=conns)]


def decode_with_rosbags(raw: bytes) -> object:
    """TrajectorySample decoded by rosbags alone (no rclpy): an independent reader of the bags."""
    return sample_typestore().deserialize_cdr(raw, SAMPLE_TYPE)


def index_ordered(messages: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The samples of a batch, in index order, with their log times raised where needed (by 1 ns past the
    previous one) so that a reader, which returns a bag's messages by log time, returns them in that
    order: samples run by several robots finish out of index order, and the index fixes each one's seed."""
    out: list[tuple[int, bytes]] = []
    for stamp, raw in messages:
        out.append((stamp if not out or stamp > out[-1][0] else out[-1][0] + 1, raw))
    return out


class SampleStore:
    """Sample bags of one run folder, per (iteration, condition) batch; see the module docstring."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir) / "bags"
        self.pending_dir = self.root / "pending"
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.root.rglob(".tmp-*"):  # left by a crash mid-write; never a finished bag
            shutil.rmtree(stale, ignore_errors=True)

    def batch_path(self, iteration: int, condition: int) -> Path:
        return self.root / f"iteration_{iteration:03d}" / f"condition_{condition:02d}"

    def _pending_path(self, iteration: int, condition: int, index: int) -> Path:
        return self.pending_dir / f"iteration_{iteration:03d}_condition_{condition:02d}_sample_{index:02d}"

    def record_trial(self, iteration: int, condition: int, index: int, raw: bytes, stamp_ns: int) -> bool:
        """Persist one accepted sample of an unfinished batch (its own small bag); idempotent. True if
        this call wrote it (False: it was recorded before)."""
        path = self._pending_path(iteration, condition, index)
        if path.exists():
            return False
        write_bag(path, [(stamp_ns, raw)])
        return True

    def _pending(self, iteration: int, condition: int,
                 skip: Container[int] = ()) -> dict[int, tuple[int, bytes]]:
        """{index: (stamp, CDR)} of the batch's pending bags, those in ``skip`` left unread."""
        found = {}
        for path in self.pending_dir.iterdir():
            match = _PENDING.match(path.name)
            key = (int(match[1]), int(match[2]), int(match[3])) if match else None
            if key is not None and key[:2] == (iteration, condition) and key[2] not in skip:
                found[key[2]] = read_bag(path)[0]
        return found

    def is_closed(self, iteration: int, condition: int) -> bool:
        return self.batch_path(iteration, condition).exists()

    def samples(self, iteration: int, condition: int) -> dict[int, bytes]:
        """{sample index: CDR bytes} recorded for a batch so far (the batch bag if closed, else pending)."""
        if self.is_closed(iteration, condition):
            return {i: raw for i, (_, raw) in enumerate(read_bag(self.batch_path(iteration, condition)))}
        return {i: raw for i, (_, raw) in self._pending(iteration, condition).items()}

    def close_batch(self, iteration: int, condition: int, count: int,
                    written: Mapping[int, tuple[int, bytes]] | None = None) -> Path:
        """Write the batch bag of samples 0..count-1 from the pending bags, then delete those.

        ``written``: {index: (stamp, CDR)} of pending bags the caller wrote itself (record_trial returned
        True), taken as they are instead of read back. Raises ValueError naming the missing indices if the
        batch is incomplete.
        """
        path = self.batch_path(iteration, condition)
        if not path.exists():
            known = dict(written or {})
            pending = known | self._pending(iteration, condition, skip=known)
            missing = [i for i in range(count) if i not in pending]
            if missing:
                raise ValueError(f"batch (iteration {iteration}, condition {condition}) lacks samples "
                                 f"{missing}")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bag(path, index_ordered([pending[i] for i in range(count)]))
        for index in range(count):
            shutil.rmtree(self._pending_path(iteration, condition, index), ignore_errors=True)
        return path

    def count(self) -> int:
        """Total samples held: closed batch bags plus pending bags of batches that are not closed."""
        total = sum(len(read_bag(p)) for p in sorted(self.root.glob("iteration_*/condition_*")))
        for path in self.pending_dir.iterdir():
            match = _PENDING.match(path.name)
            if match and not self.is_closed(int(match[1]), int(match[2])):
                total += len(read_bag(path))
        return total
