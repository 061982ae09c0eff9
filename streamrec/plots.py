"""PNG figures, made the same way by every command that draws (freshness, training curves, quality)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["png"]


@contextmanager
def png(path: Path, panels: int = 1, size: tuple[float, float] = (8, 4.5)) -> Iterator[list[Any]]:
    """``panels`` axes side by side; when the block ends the figure is laid out, saved to ``path`` as a PNG
    (100 dpi, folders made) and closed. Nothing is saved if the block raises."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=size, dpi=100, squeeze=False)
    try:
        yield list(axes[0])
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
