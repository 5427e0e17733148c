"""rosbag2 recording: samples round-trip through MCAP bags byte for byte, read back by rosbags alone,
batches close atomically, and a crash leaves no half-written bag behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")
pytest.importorskip("mbpl_msgs.msg")

from mbpl_msgs.msg import TrajectorySample  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402

from mbpl_core.containers import SampleBatch  # noqa: E402
from mbpl_ros import conversions  # noqa: E402
from mbpl_ros.recording import (  # noqa: E402
    SAMPLE_TOPIC,
    SAMPLE_TYPE,
    SampleStore,
    canonical_cdr,
    decode_with_rosbags,
    read_bag,
    write_bag,
)


def _raw(trial: int, seed: int = 0, jacobians: bool = True) -> tuple[bytes, SampleBatch]:
    rng = np.random.default_rng(seed + trial)
    J = rng.standard_normal((1, 6, 3, 2)) if jacobians else None
    batch = SampleBatch(rng.standard_normal((1, 6, 10)), rng.standard_normal((1, 6, 2)), J)
    meta = conversions.SampleMetadata(condition=1, trial_id=trial, controller_id=5, abort_reason="ünïcode")
    return serialize_message(conversions.sample_to_msg(batch, meta)), batch


def test_bag_round_trip_is_exact_and_readable_without_rclpy(tmp_path: Path) -> None:
    samples = [_raw(k) for k in range(3)]
    path = write_bag(tmp_path / "bag", [(100 + k, raw) for k, (raw, _) in enumerate(samples)])
    assert (path / "metadata.yaml").is_file() and list(path.glob("*.mcap"))
    back = read_bag(path)
    assert [stamp for stamp, _ in back] == [100, 101, 102]
    for (raw, batch), (_, got) in zip(samples, back, strict=True):
        assert got == canonical_cdr(raw)
        via_rclpy, meta = conversions.msg_to_sample(deserialize_message(got, TrajectorySample))
        np.testing.assert_array_equal(via_rclpy.X, batch.X)
        np.testing.assert_array_equal(via_rclpy.ee_jacobians, batch.ee_jacobians)
        assert meta.abort_reason == "ünïcode"
        independent = decode_with_rosbags(got)  # rosbags' own CDR reader, from the .msg text
        np.testing.assert_array_equal(np.reshape(independent.u, (6, 2)), batch.U[0])
    with Reader(path) as reader:
        (conn,) = reader.connections
        assert (conn.topic, conn.msgtype) == (SAMPLE_TOPIC, SAMPLE_TYPE)
        assert "float64[] ee_jacobians" in conn.msgdef.data


def test_a_finished_bag_is_never_overwritten_and_junk_is_refused(tmp_path: Path) -> None:
    write_bag(tmp_path / "bag", [(1, _raw(0)[0])])
    with pytest.raises(FileExistsError):
        write_bag(tmp_path / "bag", [(1, _raw(1)[0])])
    with pytest.raises(ValueError, match="CDR"):
        canonical_cdr(b"\x00\x01\x00\x00\x05")
    with pytest.raises(ValueError, match="encapsulation"):
        canonical_cdr(b"junk")
    assert not list(tmp_path.glob(".tmp-*"))


def test_store_closes_batches_and_counts_every_sample_once(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    raws = [_raw(k)[0] for k in range(3)]
    store.record_trial(0, 1, 0, raws[0], 1)
    store.record_trial(0, 1, 2, raws[2], 3)
    store.record_trial(0, 1, 2, raws[2], 3)  # idempotent
    assert set(store.samples(0, 1)) == {0, 2} and store.count() == 2
    with pytest.raises(ValueError, match=r"lacks samples \[1\]"):
        store.close_batch(0, 1, 3)
    store.record_trial(0, 1, 1, raws[1], 2)
    path = store.close_batch(0, 1, 3)
    assert path == store.batch_path(0, 1) and store.is_closed(0, 1)
    assert store.samples(0, 1) == {k: canonical_cdr(r) for k, r in enumerate(raws)}
    assert store.count() == 3 and not any(store.pending_dir.iterdir())


def test_crash_leftovers_are_cleaned_and_duplicates_not_counted(tmp_path: Path) -> None:
    store = SampleStore(tmp_path)
    raws = [_raw(k)[0] for k in range(2)]
    for k, raw in enumerate(raws):
        store.record_trial(3, 0, k, raw, k)
    # a crash after the batch bag was renamed into place but before the pending bags were deleted
    write_bag(store.batch_path(3, 0), [(k, r) for k, r in enumerate(raws)])
    (store.root / ".tmp-condition_01-dead").mkdir()  # a crash in the middle of writing a bag
    reopened = SampleStore(tmp_path)
    assert not list(reopened.root.rglob(".tmp-*"))
    assert reopened.count() == 2
    reopened.close_batch(3, 0, 2)
    assert reopened.count() == 2 and not any(reopened.pending_dir.iterdir())


def test_a_batch_recorded_out_of_index_order_reads_back_in_index_order(tmp_path: Path) -> None:
    """Several robots finish a batch's samples in any order (later index, earlier record time, equal
    times): the closed batch still gives sample k at index k (each index has its own seed)."""
    store = SampleStore(tmp_path)
    raws = [_raw(k)[0] for k in range(4)]
    for index, stamp in ((3, 100), (1, 100), (0, 500), (2, 50)):
        store.record_trial(2, 0, index, raws[index], stamp)
    assert store.samples(2, 0) == {k: canonical_cdr(r) for k, r in enumerate(raws)}  # pending: by name
    store.close_batch(2, 0, 4)
    assert store.samples(2, 0) == {k: canonical_cdr(r) for k, r in enumerate(raws)}
    stamps = [t for t, _ in read_bag(store.batch_path(2, 0))]
    assert stamps == sorted(stamps) and stamps[0] == 500 and len(set(stamps)) == 4



def test_the_bag_writer_closes_a_batch_from_what_it_wrote_exactly_as_read_back(tmp_path: Path) -> None:
    """The trainer's BagWriter closes a complete batch from the samples it wrote itself (no read-back);
    oracle: a store that reads the same pending bags from disk (copied just before the close). One sample
    was recorded by an earlier session, with its own time stamp: the writer must take that one from disk."""
    from mbpl_ros.trainer_logic import BagWriter

    class Snapshotting(SampleStore):
        def close_batch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            shutil.copytree(self.pending_dir, tmp_path / "oracle" / "bags" / "pending")
            return super().close_batch(*args, **kwargs)

    raws = [_raw(k)[0] for k in range(3)]
    store = Snapshotting(tmp_path / "run")
    store.record_trial(4, 2, 1, raws[1], 7)  # before a crash
    writer = BagWriter(store)
    for index in (2, 0, 1):  # index 1 again: already recorded, not rewritten
        writer.put(4, 2, index, raws[index])
    writer.close_batch(4, 2, 3)
    writer.close()
    assert store.is_closed(4, 2) and not any(store.pending_dir.iterdir())
    oracle = SampleStore(tmp_path / "oracle")
    oracle.close_batch(4, 2, 3)
    assert read_bag(store.batch_path(4, 2)) == read_bag(oracle.batch_path(4, 2))
    assert store.samples(4, 2) == {k: canonical_cdr(r) for k, r in enumerate(raws)}
