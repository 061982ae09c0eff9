"""`streamrec demo` end to end at a small size, as a user runs it: a subprocess on a stack of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.smoke
def test_the_demo_pipeline_runs_end_to_end_and_stops_what_it_started(tmp_path: Path) -> None:
    kafka = _free_port()
    while kafka + 1 > 65534:
        kafka = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "REDIS_", "STREAMREC_"))}
    env.update(STREAMREC_BROKER="tansu", STREAMREC_STACK_DIR=str(tmp_path / "stack"),
               STREAMREC_KAFKA_PORT=str(kafka), STREAMREC_REDIS_PORT=str(_free_port()),
               STREAMREC_WORKER_PORT=str(_free_port()), STREAMREC_RECOMMENDER_PORT=str(_free_port()),
               STREAMREC_DATA_DIR=str(tmp_path / "data"), STREAMREC_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
               STREAMREC_DEMO_DIR=str(tmp_path / "demo"))
    result = subprocess.run([sys.executable, "-m", "streamrec", "demo", "--users", "150", "--items", "400",
                             "--events", "3000", "--requests", "40"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "40/40 answered, 0 errors" in result.stdout
    assert "freshness p50 / p99" in result.stdout
    assert (tmp_path / "demo" / "freshness.png").stat().st_size > 0
    assert (tmp_path / "checkpoints" / "v1" / "meta.json").is_file()
    pids = list((tmp_path / "stack").glob("*.pid"))
    assert pids == [], f"the demo left {pids} behind"


def test_the_rows_pushed_while_the_trainer_ran_are_the_newest_since_its_start() -> None:
    from streamrec.shell.demo import _pushed_since

    figures = {"rows_pushed": 10, "lags_ms": [5.0, 6.0, 7.0, 8.0]}  # rows 7..10
    assert _pushed_since(figures, 8) == [7.0, 8.0]
    assert _pushed_since(figures, 10) == []  # nothing pushed meanwhile
    assert _pushed_since(figures, 0) == [5.0, 6.0, 7.0, 8.0]  # more than the samples kept: all kept
