"""The embedding pipeline: order, overlap of backbone lanes, errors and early stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emdcli.errors import DatasetError
from emdcli.features.pipeline import DEFAULT_BATCH, embed_paths
from emdcli.features.source import FeatureSource
from emdcli.io.images import Preprocess
from emdcli.model.backbone import CPU_BATCH, Backbone, cpu_layout

PREP = Preprocess(size=16)


class MeanColour:
    """A fake extractor: each image's mean colour as a (3, 1, 1) map, with a delay per call.

    Records how many calls ran at once, and the delay of a call shrinks with each call so
    that later batches finish first when lanes overlap.
    """

    def __init__(self, lanes: int, delay: float = 0.05) -> None:
        self.lanes = lanes
        self.delay = delay
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            wait = self.delay / self.calls
        time.sleep(wait)
        with self._lock:
            self.running -= 1
        return batch.mean(axis=(2, 3), keepdims=True)


def images(tmp_path: Path, n: int) -> list[Path]:
    """``n`` plain images; image i has red value 10 * i, so its features say which it is."""
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"{i:03d}.png")
        Image.new("RGB", (20, 12), (10 * i % 256, 100, 200)).save(paths[-1])
    return paths


def expected_red(path: Path) -> float:
    return (10 * int(path.stem) % 256) / 255 * 2 - 1  # normalised with mean 0.5, std 0.5


def test_results_come_in_input_order_when_lanes_overlap(tmp_path: Path) -> None:
    paths = images(tmp_path, 23)
    net = MeanColour(lanes=3)
    got = list(embed_paths(net, PREP, paths, batch_size=2, workers=2))
    assert [e.path for e in got] == paths
    assert net.most_at_once == 3  # three batches were in the backbone at the same time
    for e in got:
        assert e.features is not None and e.features.shape == (3, 1, 1)
        assert float(e.features[0, 0, 0]) == pytest.approx(expected_red(e.path), abs=1e-6)


def test_one_lane_means_one_call_at_a_time(tmp_path: Path) -> None:
    net = MeanColour(lanes=1)
    got = list(embed_paths(net, PREP, images(tmp_path, 9), batch_size=2))
    assert len(got) == 9 and net.calls == 5 and net.most_at_once == 1


def test_unreadable_images_keep_their_place(tmp_path: Path) -> None:
    paths = images(tmp_path, 5)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    order = [paths[0], bad, *paths[1:]]
    got = list(embed_paths(MeanColour(lanes=2), PREP, order, batch_size=2))
    assert [e.path for e in got] == order
    assert got[1].features is None and got[1].error is not None and "bad.png" in got[1].error
    assert all(e.features is not None for i, e in enumerate(got) if i != 1)


def test_a_batch_of_only_bad_images_does_not_call_the_backbone(tmp_path: Path) -> None:
    bad = [tmp_path / "a.png", tmp_path / "b.png"]
    for p in bad:
        p.write_bytes(b"junk")
    net = MeanColour(lanes=2)
    got = list(embed_paths(net, PREP, bad, batch_size=2))
    assert [e.error is not None for e in got] == [True, True]
    assert net.calls == 0


def test_an_error_from_the_path_source_comes_after_the_paths_before_it(tmp_path: Path) -> None:
    paths = images(tmp_path, 5)

    def source() -> Iterator[Path]:
        yield from paths
        raise DatasetError("query path does not exist: nope")

    seen: list[Path] = []
    with pytest.raises(DatasetError, match="nope"):
        for e in embed_paths(MeanColour(lanes=2), PREP, source(), batch_size=2):
            seen.append(e.path)
    assert seen == paths  # the last, partial batch too


def test_a_slow_source_does_not_hold_back_finished_results(tmp_path: Path) -> None:
    paths = images(tmp_path, 3)
    release = threading.Event()

    def source() -> Iterator[Path]:
        yield from paths
        release.wait(10)  # a pipe that has not sent its next line yet

    stream = embed_paths(MeanColour(lanes=2), PREP, source(), batch_size=1)
    first = next(stream)
    assert first.path == paths[0] and not release.is_set()
    release.set()
    assert [e.path for e in stream] == paths[1:]


def test_a_stalled_source_sends_a_smaller_batch(tmp_path: Path) -> None:
    paths = images(tmp_path, 3)
    release = threading.Event()

    def source() -> Iterator[Path]:
        yield from paths
        release.wait(10)  # nothing more for now: rows should not wait for a full batch of 8
        yield from images(tmp_path / "later", 2)

    (tmp_path / "later").mkdir()
    net = MeanColour(lanes=2)
    stream = embed_paths(net, PREP, source(), batch_size=8)
    first = [next(stream) for _ in range(3)]
    assert [e.path for e in first] == paths and not release.is_set()
    release.set()
    assert [e.path.name for e in stream] == ["000.png", "001.png"]
    assert net.calls == 2


def test_stopping_early_returns_without_reading_everything(tmp_path: Path) -> None:
    paths = images(tmp_path, 4)
    read: list[Path] = []

    def source() -> Iterator[Path]:
        for i in range(10_000):
            read.append(paths[i % 4])
            yield paths[i % 4]

    stream = embed_paths(MeanColour(lanes=2, delay=0.01), PREP, source(), batch_size=4)
    assert next(stream).path == paths[0]
    stream.close()
    count = len(read)
    time.sleep(0.2)
    assert len(read) <= count + 1  # the reader stopped
    # Read: the batch yielded, lanes + 1 batches queued, one waiting to be queued, two
    # batches' worth in the path queue, and the path the reader holds.
    assert count <= 4 * (1 + 3 + 1 + 2) + 1


def test_backbone_errors_reach_the_caller(tmp_path: Path) -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("backbone failed")

    with pytest.raises(RuntimeError, match="backbone failed"):
        list(embed_paths(broken, PREP, images(tmp_path, 3), batch_size=2))


def test_cpu_layout_splits_cores_into_lanes() -> None:
    assert cpu_layout(1) == (1, 1)
    assert cpu_layout(2) == (2, 1)
    assert cpu_layout(3) == (3, 1)
    assert cpu_layout(16) == (4, 4)


def test_backbone_lanes_and_threads(tiny_model: Path) -> None:
    assert Backbone(tiny_model, device="cpu", threads=1).lanes == 1
    two = Backbone(tiny_model, device="cpu", lanes=2)
    assert two.lanes == 2 and two.threads is not None and two.threads >= 1
    default = Backbone(tiny_model, device="cpu")
    assert (default.lanes, default.threads) in {cpu_layout(n) for n in range(1, 65)}


def test_concurrent_backbone_calls_match_serial_ones(tiny_model: Path) -> None:
    net = Backbone(tiny_model, device="cpu", lanes=2)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((3, 3, 32, 32)).astype(np.float32) for _ in range(8)]
    serial = [net(b) for b in batches]
    out: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        out[i] = net(batches[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, ref in enumerate(serial):
        np.testing.assert_array_equal(out[i], ref)


def test_feature_source_takes_the_backbone_batch_size(tiny_model: Path) -> None:
    net = Backbone(tiny_model, device="cpu")
    assert net.batch_size == CPU_BATCH
    assert FeatureSource(net).batch_size == CPU_BATCH
    assert FeatureSource(net, batch_size=7).batch_size == 7
    assert FeatureSource(MeanColour(lanes=1), PREP).batch_size == DEFAULT_BATCH


def test_decoding_threads_default_to_one_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import emdcli.model.backbone as backbone_module

    monkeypatch.setattr(backbone_module, "usable_cores", lambda: 3)
    assert FeatureSource(MeanColour(lanes=1), PREP).workers == 3
    assert FeatureSource(MeanColour(lanes=1), PREP, workers=1).workers == 1
