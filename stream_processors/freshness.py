"""Freshness and throughput figures of a stream worker, as pure bookkeeping.

Freshness of a pushed row = the time it was written to the online store − the Kafka record timestamp
of the newest event in it (when that event entered Kafka, so replays of old data measure real lag).
Percentiles come from a ring of the most recent samples; counters are cumulative since start.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from streamrec.health import dlq_reason_kind
from streamrec.stats import percentiles

__all__ = ["FreshnessTracker"]


class FreshnessTracker:
    """Lag samples (ms), event counters and a moving events/s rate."""

    def __init__(self, window: int = 20_000, rate_window_s: float = 10.0) -> None:
        self._lags: deque[float] = deque(maxlen=window)
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, events) for events/s
        self._rate_window_s = rate_window_s
        self.events = 0
        self.applied = 0
        self.duplicates = 0
        self.rows_pushed = 0
        self.pushes = 0
        self.push_retries = 0
        self.fenced_batches = 0  # batches dropped unacked: their partitions were taken away before the write
        self.dlq: Counter[str] = Counter()
        self.started = time.time()
        self.last_push_at: float | None = None

    def record_batch(self, events: int, applied: int, lags_ms: list[float], now: float | None = None) -> None:
        """One micro-batch pushed: ``lags_ms`` has one sample per pushed row."""
        self.events += events
        self.applied += applied
        self.duplicates += events - applied
        self.rows_pushed += len(lags_ms)
        self.pushes += 1 if lags_ms else 0
        self._lags.extend(lags_ms)
        self.last_push_at = time.time()
        stamp = time.monotonic() if now is None else now
        self._recent.append((stamp, events))
        while self._recent and stamp - self._recent[0][0] > self._rate_window_s:
            self._recent.popleft()

    def record_dlq(self, reason: str) -> None:
        # Count by the kind of problem (text before the first colon), not by each field value.
        self.dlq[dlq_reason_kind(reason, self.dlq)] += 1
        self.events += 1

    def events_per_s(self, now: float | None = None) -> float:
        stamp = time.monotonic() if now is None else now
        recent = [(t, n) for t, n in self._recent if stamp - t <= self._rate_window_s]
        if not recent:
            return 0.0
        span = max(stamp - recent[0][0], 1e-3) if len(recent) > 1 else self._rate_window_s
        return sum(n for _, n in recent) / min(max(span, 1.0), self._rate_window_s)

    def percentiles(self) -> dict[str, float | None]:
        return percentiles(self._lags, with_max=True)

    def samples(self, limit: int = 5000) -> list[float]:
        return list(self._lags)[-limit:]

    def snapshot(self) -> dict[str, Any]:
        """Everything as one JSON-able dict (the worker's /freshness endpoint)."""
        return {
            "freshness_ms": self.percentiles(), "samples": len(self._lags),
            "events_per_s": round(self.events_per_s(), 1), "events": self.events, "applied": self.applied,
            "duplicates_skipped": self.duplicates, "rows_pushed": self.rows_pushed, "pushes": self.pushes,
            "push_retries": self.push_retries, "fenced_batches": self.fenced_batches,
            "dlq": dict(self.dlq), "dlq_total": sum(self.dlq.values()),
            "uptime_s": round(time.time() - self.started, 1), "last_push_at": self.last_push_at,
        }

    def prometheus(self, prefix: str = "streamrec") -> str:
        """The same figures in Prometheus' text exposition format."""
        p = self.percentiles()
        lines = [f"# HELP {prefix}_freshness_ms Online-store write time minus Kafka record time, ms.",
                 f"# TYPE {prefix}_freshness_ms summary"]
        for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"), ("1", "max")):
            if p[key] is not None:
                lines.append(f'{prefix}_freshness_ms{{quantile="{q}"}} {p[key]:.3f}')
        lines.append(f"{prefix}_freshness_ms_count {self.rows_pushed}")
        counters = {"events_total": self.events, "events_applied_total": self.applied,
                    "events_duplicate_total": self.duplicates, "rows_pushed_total": self.rows_pushed,
                    "pushes_total": self.pushes, "push_retries_total": self.push_retries,
                    "fenced_batches_total": self.fenced_batches}
        for name, value in counters.items():
            lines += [f"# TYPE {prefix}_{name} counter", f"{prefix}_{name} {value}"]
        lines.append(f"# TYPE {prefix}_dlq_total counter")
        for reason, value in sorted(self.dlq.items()):
            escaped = reason.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{prefix}_dlq_total{{reason="{escaped}"}} {value}')
        lines += [f"# TYPE {prefix}_events_per_second gauge", f"{prefix}_events_per_second {self.events_per_s():.3f}"]
        return "\n".join(lines) + "\n"
