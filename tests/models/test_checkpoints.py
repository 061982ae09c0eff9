from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from models import checkpoints
from models.checkpoints import (
    CheckpointError,
    latest_version,
    list_versions,
    promote,
    read_checkpoint,
    save_checkpoint,
)
from models.compare import Report
from models.data import user_batch
from models.features import popularity_ranking
from serving.model import load_checkpoint, load_latest


@pytest.fixture
def copy(checkpoint: Path, tmp_path: Path) -> Path:
    """A private copy of the session checkpoint that a test may damage."""
    dst = tmp_path / "ckpt" / checkpoint.name
    shutil.copytree(checkpoint, dst)
    return dst


def _rewrite_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write new weights and fix the checksum, so only the content check can catch the damage."""
    save_file(state, str(path / checkpoints.WEIGHTS))
    meta = json.loads((path / checkpoints.META).read_text())
    meta["weights"]["sha256"] = checkpoints._sha256(path / checkpoints.WEIGHTS)
    (path / checkpoints.META).write_text(json.dumps(meta))


def test_round_trip(trained: Report, checkpoint: Path) -> None:
    model, schema, meta = read_checkpoint(checkpoint)
    original = trained.fit.model.state_dict()
    assert all(torch.equal(original[k].cpu(), v) for k, v in model.state_dict().items())
    assert schema == trained.prepared.enc.schema
    assert meta["version"] == "v1" and meta["metrics"]["recall@10"] == trained.test["two-tower"]["recall@10"]
    assert {"created_at", "data_window", "config", "feature_schema"} <= set(meta)
    served = load_checkpoint(checkpoint)
    ranked = tuple(popularity_ranking(trained.prepared.raw.interactions))
    assert served.popularity == tuple(meta["popularity"]) == ranked
    assert len(served.popularity) > 100 and "popularity" not in served.meta  # kept out of the small meta
    assert load_latest(checkpoint.parent).version == "v1"


def test_a_checkpoint_from_before_popularity_loads_with_none(copy: Path) -> None:
    meta = json.loads((copy / checkpoints.META).read_text())
    del meta["popularity"]
    (copy / checkpoints.META).write_text(json.dumps(meta))
    assert load_checkpoint(copy).popularity == ()


def test_never_unpickles(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load / pickle must never be used to read a checkpoint")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr("pickle.loads", forbidden)
    monkeypatch.setattr("pickle.load", forbidden)
    assert load_checkpoint(checkpoint).version == "v1"


def test_truncated_weights_are_refused(copy: Path) -> None:
    weights = copy / checkpoints.WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(copy)
    # with the checksum "fixed", the safetensors parser itself must refuse it
    meta = json.loads((copy / checkpoints.META).read_text())
    meta["weights"]["sha256"] = checkpoints._sha256(weights)
    (copy / checkpoints.META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(copy)


def test_wrong_shapes_are_refused(copy: Path) -> None:
    state = load_file(str(copy / checkpoints.WEIGHTS))
    state["user_tower.mlp.1.weight"] = state["user_tower.mlp.1.weight"][:, :-1].contiguous()
    _rewrite_weights(copy, state)
    with pytest.raises(CheckpointError, match=r"user_tower\.mlp\.1\.weight .* expected"):
        read_checkpoint(copy)


def test_missing_tensor_and_nan_are_refused(copy: Path) -> None:
    state = load_file(str(copy / checkpoints.WEIGHTS))
    bad = dict(state)
    del bad["user_tower.pos_bias"]
    _rewrite_weights(copy, bad)
    with pytest.raises(CheckpointError, match="missing"):
        read_checkpoint(copy)
    state["user_tower.pos_bias"][0] = float("nan")
    _rewrite_weights(copy, state)
    with pytest.raises(CheckpointError, match="NaN"):
        read_checkpoint(copy)


@pytest.mark.parametrize("damage, message", [
    (lambda m: "{not json", "not valid JSON"),
    (lambda m: json.dumps({k: v for k, v in m.items() if k != "config"}), "lacks config"),
    (lambda m: json.dumps({**m, "version": "v7"}), "says version"),
    (lambda m: json.dumps({**m, "format_version": 2}), "format"),
    (lambda m: json.dumps({**m, "config": {**m["config"], "dim": 32}}), "expected"),
    (lambda m: json.dumps({**m, "config": {**m["config"], "n_items": 9}}), "feature schema implies"),
    (lambda m: json.dumps({**m, "feature_schema": {**m["feature_schema"], "item_ids": 3}}), "feature_schema"),
    (lambda m: json.dumps({**m, "metrics": {"recall@10": "high"}}), "metrics"),
    (lambda m: json.dumps({**m, "popularity": [1, 2]}), "popularity"),
    (lambda m: json.dumps({**m, "popularity": "I1"}), "popularity"),
])
def test_bad_meta_is_refused(copy: Path, damage, message: str) -> None:  # noqa: ANN001 - lambda
    meta = json.loads((copy / checkpoints.META).read_text())
    (copy / checkpoints.META).write_text(damage(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(copy)


def test_latest_is_replaced_atomically(copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy.parent
    assert latest_version(root) is None
    with pytest.raises(CheckpointError, match="no LATEST"):
        load_latest(root)
    promote(root, "v1")
    assert (root / "LATEST").read_text() == "v1\n"
    shutil.copytree(copy, root / "v2")
    meta = json.loads((root / "v2" / checkpoints.META).read_text())
    (root / "v2" / checkpoints.META).write_text(json.dumps({**meta, "version": "v2"}))
    assert list_versions(root) == ["v1", "v2"]

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        promote(root, "v2")
    monkeypatch.undo()
    assert latest_version(root) == "v1"  # the old pointer survives a crash mid-promotion
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "v1", "v2"]  # no temp file left behind
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        promote(root, "v9")
    promote(root, "v2")
    assert load_latest(root).version == "v2"
    (root / "LATEST").write_text("../../etc\n")
    with pytest.raises(CheckpointError, match="expected a version name"):
        load_latest(root)


def test_save_claims_the_next_version(trained: Report, tmp_path: Path) -> None:
    model, schema = trained.fit.model, trained.prepared.enc.schema
    (tmp_path / "v4").mkdir()  # a stray folder without meta still counts as taken
    path = checkpoints.save_checkpoint(tmp_path, model, schema, metrics={"recall@10": 0.1}, data_window={})
    assert path.name == "v5" and not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="NaN|nan|Out of range"):
        checkpoints.save_checkpoint(tmp_path, model, schema, metrics={"recall@10": float("nan")}, data_window={})
    assert list_versions(tmp_path) == ["v4", "v5"]


@pytest.mark.parametrize("version", ["../v1", "v1/..", "/etc", "v0", "v1 ", "latest", "v1/../../x", ""])
def test_only_version_names_inside_the_checkpoint_dir_name_a_folder(tmp_path: Path, version: str) -> None:
    from models.checkpoints import CheckpointError, version_folder

    with pytest.raises(CheckpointError):
        version_folder(tmp_path, version)


def test_a_version_folder_linked_out_of_the_checkpoint_dir_is_refused(tmp_path: Path) -> None:
    from models.checkpoints import CheckpointError, version_folder

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "v2").symlink_to(outside)
    assert version_folder(root, "v3") == (root / "v3").resolve()
    with pytest.raises(CheckpointError, match="outside"):
        version_folder(root, "v2")


def test_a_checkpoint_from_before_the_sequence_tower_loads_as_the_pooled_tower(tmp_path: Path, trained: Report) -> None:
    """Checkpoints written before TowerConfig had user_tower/heads (and skip/skip_dropout, last_events) held the
    pooled tower without a linear path: they still load, as that tower, with the same user vectors, in torch and
    in serving's numpy forward."""
    from dataclasses import replace

    from models.train import new_model
    from serving.model import NumpyUserTower

    schema = trained.prepared.enc.schema
    torch.manual_seed(0)
    old = new_model(schema, trained.prepared.enc, user_tower="pooled", skip=0.0, skip_dropout=0.0)
    path = save_checkpoint(tmp_path, old, schema, metrics={}, data_window={})
    meta = json.loads((path / checkpoints.META).read_text())
    for key in ("user_tower", "heads", "skip", "skip_dropout", "last_events"):
        del meta["config"][key]
    (path / checkpoints.META).write_text(json.dumps(meta))
    model, _, _ = read_checkpoint(path)
    assert model.cfg == replace(old.cfg, heads=2) and not model.sequential
    u = user_batch(trained.prepared.enc, torch.as_tensor(trained.prepared.split.test[:8]))
    with torch.inference_mode():
        assert torch.allclose(model.users(u), old.eval().users(u))
        served = load_checkpoint(path)._users
        assert isinstance(served, NumpyUserTower)
        assert np.allclose(served(*(t.cpu().numpy() for t in u)), old.users(u).numpy(), atol=2e-5)


def test_a_checkpoint_with_the_newest_events_input_serves_what_it_trained(tmp_path: Path, trained: Report) -> None:
    """TowerConfig.last_events widens the pooled tower's MLP: its checkpoint loads with that width and serving's
    numpy forward gives the torch model's user vectors, and the newest events move them (the input is read)."""
    from models.train import new_model

    schema, enc = trained.prepared.enc.schema, trained.prepared.enc
    torch.manual_seed(0)
    model = new_model(schema, enc, last_events=2).eval()
    with torch.no_grad():
        for p in model.user_tower.mlp.parameters():
            p.normal_(0, 0.5)
    path = save_checkpoint(tmp_path, model, schema, metrics={}, data_window={})
    loaded, _, _ = read_checkpoint(path)
    assert loaded.cfg.last_events == 2 and loaded.user_tower.mlp[1].in_features == 7 * model.cfg.dim
    u = user_batch(enc, torch.as_tensor(trained.prepared.split.test[:8]))
    assert (u.hist_items[:, 2] > 0).all(), "the test needs histories longer than last_events"
    with torch.inference_mode():
        want = model.users(u).numpy()
        assert np.allclose(loaded.users(u).numpy(), want, atol=1e-6)
        assert np.allclose(load_checkpoint(path)._users(*(t.cpu().numpy() for t in u)), want, atol=2e-5)

    # the added block reads the newest two events and nothing older: with the MLP reading only that block
    # (and no linear path), older events change nothing and the newest do
    only = new_model(schema, enc, last_events=2, skip=0.0).eval()
    with torch.no_grad():
        only.user_tower.mlp[1].weight[:, :6 * model.cfg.dim] = 0
    items = u.hist_items.clone()
    older, newest = items.clone(), items.clone()
    older[:, 2:] = torch.where(older[:, 2:] > 0, 1, 0)  # every older event becomes the OOV row
    newest[:, :2] = 1
    with torch.inference_mode():
        base = only.users(u)
        assert torch.allclose(only.users(u._replace(hist_items=older)), base, atol=1e-6)
        assert not torch.allclose(only.users(u._replace(hist_items=newest)), base, atol=1e-3)
