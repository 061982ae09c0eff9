from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from generation.dataset_gen_amazon import Dataset, write
from models.checkpoints import latest_version, list_versions
from models.cli import train, trainer
from serving.model import load_latest
from streamrec._exceptions import StreamrecError


@pytest.mark.parametrize("command", [train, trainer])
def test_help(command) -> None:  # noqa: ANN001 - click command
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0
    for flag in ("--batch-size", "--lr", "--dim", "--seed", "--data-dir", "--out"):
        assert flag in result.output


def test_train_end_to_end(tiny: Dataset, tmp_path: Path) -> None:
    write(tiny, tmp_path / "data")
    args = ["--epochs", "2", "--dim", "16", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "ck"),
            "--plot", str(tmp_path / "curve.png")]
    result = CliRunner().invoke(train, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("two-tower", "random", "popularity", "oracle", "recall@10", "ndcg@10", "coverage@10"):
        assert name in result.output
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert latest_version(tmp_path / "ck") == "v1" and load_latest(tmp_path / "ck").dim == 16
    assert load_latest(tmp_path / "ck").popularity  # serving backfills from it, not from the data folder
    again = CliRunner().invoke(train, [*args[:-2], "--no-plot", "--no-promote"], catch_exceptions=False)
    assert again.exit_code == 0 and list_versions(tmp_path / "ck") == ["v1", "v2"]
    assert latest_version(tmp_path / "ck") == "v1"


def test_user_errors_are_streamrec_errors(tmp_path: Path) -> None:
    result = CliRunner().invoke(train, ["--data-dir", str(tmp_path / "nothing")])
    assert isinstance(result.exception, StreamrecError)
    assert "streamrec generate" in str(result.exception) and "\n" not in str(result.exception)
    import os

    import torch

    priority, threads = os.nice(0), torch.get_num_threads()
    result = CliRunner().invoke(trainer, ["--every", "soon"])
    assert isinstance(result.exception, StreamrecError) and "--every" in str(result.exception)
    result = CliRunner().invoke(trainer, [])
    assert isinstance(result.exception, StreamrecError) and "--once" in str(result.exception)
    # a usage error leaves the process as it was (the trainer lowers its priority only to run)
    assert (os.nice(0), torch.get_num_threads()) == (priority, threads)


def test_bad_device_is_one_clear_error(tiny: Dataset, tmp_path: Path) -> None:
    write(tiny, tmp_path)
    result = CliRunner().invoke(train, ["--data-dir", str(tmp_path), "--device", "warp-drive"])
    assert isinstance(result.exception, StreamrecError) and "--device" in str(result.exception)
