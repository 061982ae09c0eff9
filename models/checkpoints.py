"""Versioned checkpoints: ``v<N>/model.safetensors`` + ``v<N>/meta.json``, and ``LATEST``.

A version folder is written under a temporary name and renamed into place, so a reader never sees
a half-written ``v<N>``; ``LATEST`` (the promoted version's name) is replaced with ``os.replace``.
Loading never unpickles: weights come from safetensors, everything else from JSON, and both are
checked (format, checksum, tensor names, shapes, dtypes, finiteness) before a model is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from streamrec._exceptions import StreamrecError
from streamrec.files import atomic_write, fsync_dir

from .features import FeatureError, FeatureSchema
from .towers import TowerConfig, TwoTower

__all__ = ["version_folder", "CheckpointError", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "META", "LATEST",
           "save_checkpoint", "read_checkpoint", "promote", "latest_version", "list_versions"]

FORMAT, FORMAT_VERSION = "streamrec.two-tower", 1
WEIGHTS, META, LATEST = "model.safetensors", "meta.json", "LATEST"
_VERSION = re.compile(r"^v([1-9][0-9]{0,8})$")
_REQUIRED = ("format", "format_version", "version", "created_at", "data_window", "metrics", "config",
             "feature_schema", "weights")


class CheckpointError(StreamrecError):
    """A checkpoint is missing, corrupt or does not match the code that loads it."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_versions(checkpoint_dir: Path) -> list[str]:
    """Version folders present, oldest first (promoted or not)."""
    if not Path(checkpoint_dir).is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in Path(checkpoint_dir).iterdir()
             if p.is_dir() and (m := _VERSION.match(p.name))]
    return [name for _, name in sorted(found)]


def version_folder(checkpoint_dir: Path, version: str) -> Path:
    """The folder of ``version`` inside ``checkpoint_dir``, the only place weights are loaded from.

    Raises CheckpointError for a name that is not a version (``v3``) or a folder that resolves elsewhere
    (a symbolic link out of the checkpoint directory)."""
    if not isinstance(version, str) or not _VERSION.match(version):
        raise CheckpointError(f"{str(version)[:40]!r} is not a version name like v3")
    root = Path(checkpoint_dir).resolve()
    folder = (root / version).resolve()
    if folder.parent != root:
        raise CheckpointError(f"{version} resolves outside the checkpoint directory")
    return folder


def latest_version(checkpoint_dir: Path) -> str | None:
    """The promoted version named by LATEST, or None when nothing was promoted yet."""
    path = Path(checkpoint_dir) / LATEST
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not _VERSION.match(name):
        raise CheckpointError(f"{path} holds {name[:40]!r}, expected a version name like v3")
    return name


def promote(checkpoint_dir: Path, version: str) -> None:
    """Point LATEST at ``version`` atomically (write a temp file, fsync, os.replace)."""
    root = Path(checkpoint_dir)
    if not _VERSION.match(version) or not (root / version / META).is_file():
        raise CheckpointError(f"cannot promote {version!r}: no such checkpoint in {root}")
    atomic_write(root / LATEST, version + "\n", mode=0o644)  # readers may run as another user
    fsync_dir(root)


def save_checkpoint(checkpoint_dir: Path, model: TwoTower, schema: FeatureSchema, *,
                    metrics: dict[str, float], data_window: dict[str, Any],
                    train: dict[str, Any] | None = None, parent: str | None = None,
                    popularity: Sequence[str] = ()) -> Path:
    """Write the next ``v<N>`` (not promoted) and return its path. ``popularity``: item ids, most wanted
    first, over the training data (:func:`models.features.popularity_ranking`); serving backfills from it."""
    root = Path(checkpoint_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create checkpoint folder {root}: {exc.strerror or exc}") from exc
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for _ in range(100):  # another writer may take the same N between our listing and rename
        versions = list_versions(root)
        version = f"v{int(versions[-1][1:]) + 1 if versions else 1}"
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{version}-"))
        try:
            save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "version": version})
            meta = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
                "created_at": datetime.now(UTC).isoformat(), "parent": parent,
                "data_window": data_window, "metrics": {k: float(v) for k, v in metrics.items()},
                "config": asdict(model.cfg), "train": train or {}, "feature_schema": schema.to_json(),
                "weights": {"file": WEIGHTS, "sha256": _sha256(tmp / WEIGHTS)},
                "popularity": [str(i) for i in popularity],
            }
            with (tmp / META).open("w", encoding="utf-8") as f:
                json.dump(meta, f, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            for f_ in (tmp / WEIGHTS, tmp / META):
                os.chmod(f_, 0o644)
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
            os.rename(tmp, root / version)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if (root / version).exists():
                continue
            raise CheckpointError(f"cannot write checkpoint {root / version}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # NaN metrics (allow_nan=False)
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot write checkpoint {version}: {exc}") from exc
        fsync_dir(root)
        return root / version
    raise CheckpointError(f"could not claim a version folder in {root} after 100 tries")


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint: no {META}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} must hold a JSON object")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise CheckpointError(f"{meta_path} lacks {', '.join(missing)}")
    if meta["format"] != FORMAT or meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format {meta['format']!r} v{meta['format_version']!r}, "
                              f"this code reads {FORMAT!r} v{FORMAT_VERSION}")
    if meta["version"] != path.name:
        raise CheckpointError(f"{meta_path} says version {meta['version']!r} but lives in {path.name!r}")
    if not isinstance(meta["metrics"], dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta["metrics"].values()):
        raise CheckpointError(f"{meta_path}: metrics must map names to numbers")
    popularity = meta.setdefault("popularity", [])  # absent in checkpoints written before it existed
    if not isinstance(popularity, list) or not all(isinstance(i, str) for i in popularity):
        raise CheckpointError(f"{meta_path}: popularity must be a list of item ids")
    weights = meta["weights"]
    if not isinstance(weights, dict) or weights.get("file") != WEIGHTS or not isinstance(weights.get("sha256"), str):
        raise CheckpointError(f"{meta_path}: weights must be {{'file': '{WEIGHTS}', 'sha256': ...}}")
    return meta


# fields added after checkpoints were written, with the value that reproduces those checkpoints' model
_ADDED = {"user_tower": "pooled", "heads": 2, "skip": 0.0, "skip_dropout": 0.0, "last_events": 0}


def _config(meta: dict[str, Any], schema: FeatureSchema, where: Path) -> TowerConfig:
    raw = meta["config"]
    names = {f.name for f in fields(TowerConfig)}
    if isinstance(raw, dict) and set(raw) | set(_ADDED) == names:
        raw = {**_ADDED, **raw}
    if not isinstance(raw, dict) or set(raw) != names:
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{where}: config keys {got} do not match TowerConfig {sorted(names)}")
    try:
        cfg = TowerConfig(**raw)
    except TypeError as exc:
        raise CheckpointError(f"{where}: bad config: {exc}") from exc
    wrong = {k: (getattr(cfg, k), v) for k, v in schema.sizes().items() if getattr(cfg, k) != v}
    if wrong:
        k, (have, want) = next(iter(wrong.items()))
        raise CheckpointError(f"{where}: config {k}={have} but the feature schema implies {want}")
    return cfg


def read_checkpoint(path: Path) -> tuple[TwoTower, FeatureSchema, dict[str, Any]]:
    """Validate and load ``v<N>``: the model (eval mode, CPU), its feature schema and its meta."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint folder at {path}")
    meta = _read_meta(path)
    try:
        schema = FeatureSchema.from_json(meta["feature_schema"])
    except FeatureError as exc:
        raise CheckpointError(f"{path / META}: {exc}") from exc
    cfg = _config(meta, schema, path / META)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS}")
    if _sha256(weights) != meta["weights"]["sha256"]:
        raise CheckpointError(f"{weights} does not match the checksum in {META} (truncated or corrupt)")
    try:
        state = load_file(str(weights))  # safetensors: a JSON header plus raw buffers, never pickle
    except Exception as exc:  # SafetensorError and friends carry no common base we can name
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from exc
    model = TwoTower(cfg)
    expected = model.state_dict()
    if set(state) != set(expected):
        extra, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
        raise CheckpointError(f"{weights}: unexpected tensors {extra[:3]}, missing {missing[:3]}")
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(f"{weights}: {name} is {got.dtype} {tuple(got.shape)}, "
                                  f"expected {want.dtype} {tuple(want.shape)}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"{weights}: {name} holds NaN or infinite values")
    for feature in ("top", "leaf", "price", "rating", "count", "text"):
        values, size = state[f"item_tower.f_{feature}"], getattr(cfg, f"n_{feature}")
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= size):
            raise CheckpointError(f"{weights}: item feature {feature} indexes outside its table of {size}")
    model.load_state_dict(state)
    return model.eval(), schema, meta
