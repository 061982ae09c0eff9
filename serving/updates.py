"""What the recommender serves with, and how it stays current: the serving state, the hot swap, and the
followers of `item-updates` and `model-updates` with the trust rules for a model update.

Every instance follows both topics on every partition (each needs all of them) from where they stood when
it started, and checks LATEST every few seconds (:meth:`Serving.watch_latest`): a missed announcement still
reaches it. A new model is loaded and indexed off the event loop and swapped in one assignment; one that
fails to load is refused and logged, and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from models.checkpoints import CheckpointError, latest_version, version_folder
from streamrec import kafka_clients
from streamrec._exceptions import is_infrastructure
from streamrec.config import Settings
from streamrec.features import FeatureClient
from streamrec.health import dlq_reason_kind
from streamrec.retry import retry
from streamrec.schemas import ItemUpdate, ModelUpdate, SchemaError, bounded_key, dead_letter, decode, encode
from streamrec.topics import ITEM_UPDATES, MODEL_UPDATES, dlq

from .filtering import load_filter_config
from .model import load_checkpoint
from .recommend import Recommender, ServingBundle, load_catalog
from .stages import StageTimes

__all__ = ["Serving", "RefusedUpdate", "follow", "apply_followed", "FOLLOW_RETRY_S"]

log = logging.getLogger("streamrec.recommender")
FOLLOW_RETRY_S = 10.0  # a followed record failing on the infrastructure is tried this long, then passed over
DLQ_MAX_RAW_BYTES = Settings.model_fields["dlq_max_raw_bytes"].default


class RefusedUpdate(SchemaError):
    """A well-formed model update that is not trusted (dead-lettered, logged at WARNING)."""


class Serving:
    """What the recommender serves with; `bundle` is replaced whole on a hot swap."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.window = settings.time_window()
        self.ready = asyncio.Event()
        self.features: FeatureClient | None = None
        self.recommender: Recommender | None = None
        self.bundle: ServingBundle | None = None
        self.swaps = 0
        self.model_since: float | None = None  # epoch seconds the serving model was swapped in (model freshness)
        self.refused: Counter[str] = Counter()  # model updates refused, by reason (never their paths)
        self._refused_versions: set[str] = set()  # versions that failed to load: LATEST is not retried
        self.requests = 0
        self.errors = 0
        self.expired = 0
        self.stalled: list[str] = []
        self.gc_frozen = 0  # objects frozen after the start (serving/app.py _freeze_start_heap)
        # where a request's time goes: Kafka → request group, feature read, model + filters, response delivery
        self.stages = StageTimes()

    @property
    def version(self) -> str | None:
        return self.bundle.version if self.bundle else None

    async def start(self, add_future: Callable[[Awaitable[None]], Any]) -> None:
        """Read the catalogue and the newest model, then follow item and model updates (``add_future``: the
        app's, so the followers live and stop with it)."""
        settings, loop = self.settings, asyncio.get_running_loop()
        # before the catalog read: no update is missed
        item_consumer = await kafka_clients.consumer_at_end(settings, ITEM_UPDATES, fetch_max_wait_ms=50)
        model_consumer = await kafka_clients.consumer_at_end(settings, MODEL_UPDATES, fetch_max_wait_ms=50)
        self.features = await loop.run_in_executor(None, FeatureClient, settings)
        catalog = await loop.run_in_executor(None, load_catalog, self.features)
        self.recommender = Recommender(catalog, load_filter_config(settings.filters_config,
                                                                   categories=catalog.categories))
        version = latest_version(settings.checkpoint_dir)
        if version is not None:
            await self.swap_to(version)
        else:
            log.warning("no model in %s yet: answering with popularity", settings.checkpoint_dir)
        self.ready.set()
        log.info("recommender ready: %d items, model %s", len(catalog), self.version)
        add_future(follow(item_consumer, self.apply_item_update))
        dlq_producer = kafka_clients.aio_producer(settings, acks="all")
        await dlq_producer.start()
        add_future(follow(model_consumer, self.apply_model_update, dlq_producer, settings.dlq_max_raw_bytes))

    def refuse(self, reason: str, detail: str) -> None:
        self.refused[dlq_reason_kind(reason, self.refused)] += 1
        log.warning("refused a model update (%s): %s; still serving %s", reason, detail[:300], self.version)

    def failed_before(self, version: str) -> bool:
        return version in self._refused_versions

    async def swap_to(self, version: str) -> bool:
        """Load, index and swap in checkpoint ``version`` of STREAMREC_CHECKPOINT_DIR; False (old model
        kept) if it is not there or fails to load."""
        loop = asyncio.get_running_loop()
        try:
            folder = version_folder(self.settings.checkpoint_dir, version)
            bundle = await loop.run_in_executor(None, lambda: ServingBundle.build(load_checkpoint(folder)))
            if bundle.version != version:
                raise CheckpointError(f"its meta.json names version {str(bundle.version)[:40]!r}")
        except CheckpointError as exc:
            if len(self._refused_versions) < 1000:
                self._refused_versions.add(version[:40])
            self.refuse("unloadable", f"{version[:40]}: {exc}")
            return False
        self.bundle = bundle  # one assignment: a batch in flight keeps the bundle it started with
        self.swaps, self.model_since = self.swaps + 1, time.time()
        log.info("serving model %s (%d items)", bundle.version, len(bundle.item_ids))
        return True

    async def watch_latest(self) -> None:
        """LATEST is the source of truth: a missed model-updates message still reaches every instance."""
        if not self.ready.is_set():
            return
        try:
            version = latest_version(self.settings.checkpoint_dir)
        except CheckpointError as exc:
            log.warning("LATEST unreadable, still serving %s: %s", self.version, exc)
            return
        if version is not None and version != self.version and not self.failed_before(version):
            await self.swap_to(version)

    async def apply_item_update(self, value: bytes | None) -> None:
        update = decode(ItemUpdate, value, self.window)
        if self.recommender is not None:
            self.recommender.catalog.update(update.item_id, stock=update.stock, price=update.price)

    async def apply_model_update(self, value: bytes | None) -> None:
        """Trusted only inside STREAMREC_CHECKPOINT_DIR: the version names the folder, and a ``path`` that
        resolves anywhere else is refused. Announcements are keyed by version, so partitions may deliver v1
        after v2: only a newer version is taken (a rollback is done through LATEST, which watch_latest
        follows either way)."""
        try:
            update = decode(ModelUpdate, value, self.window)
        except SchemaError as exc:
            self.refuse("malformed", str(exc))
            raise
        try:
            folder = version_folder(self.settings.checkpoint_dir, update.version)
        except CheckpointError as exc:
            self.refuse("bad_version", str(exc))
            raise RefusedUpdate(f"version: {exc}") from None
        if Path(update.path).resolve() != folder:
            self.refuse("outside_checkpoint_dir", f"{update.version}: path does not name its folder")
            raise RefusedUpdate(f"path: must be the folder of {update.version} inside STREAMREC_CHECKPOINT_DIR")
        if _number(update.version) <= _number(self.version):
            self.refuse("not_newer", f"{update.version} is not newer than {self.version}")
            raise RefusedUpdate(f"version: {update.version} is not newer than the model serving ({self.version})")
        if not await self.swap_to(update.version):
            raise RefusedUpdate(f"version: {update.version} could not be loaded")


def _number(version: str | None) -> int:
    return int(version[1:]) if version and version[1:].isdigit() else -1


async def follow(consumer: Any, handle: Callable[[bytes | None], Awaitable[None]], dlq_producer: Any = None,
                 max_raw_bytes: int = DLQ_MAX_RAW_BYTES) -> None:
    """Apply every record from where the consumer stands, forever (each instance sees them all).

    A record that cannot be used is logged and skipped (with ``dlq_producer``, also dead-lettered: the
    features worker already dead-letters bad item updates, nobody else reads model-updates); nothing a
    record holds stops the follower (:func:`apply_followed`).
    """

    async def send_dead_letter(topic: str, value: bytes, key: bytes | None) -> None:
        await dlq_producer.send_and_wait(topic, value, key=key)

    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    await apply_followed(record, handle, send_dead_letter if dlq_producer is not None else None,
                                         max_raw_bytes)
    finally:
        await consumer.stop()
        if dlq_producer is not None:
            await dlq_producer.stop()


async def apply_followed(record: Any, handle: Callable[[bytes | None], Awaitable[None]],
                         send_dead_letter: Callable[[str, bytes, bytes | None], Awaitable[None]] | None = None,
                         max_raw_bytes: int = DLQ_MAX_RAW_BYTES) -> None:
    """``handle`` one followed record under the workers' error policy (streamrec/retry.py); never raises
    for the record. The infrastructure's failures are retried for FOLLOW_RETRY_S, then the record is passed
    over (LATEST, watched every few seconds, still brings a model announced meanwhile); the data's are
    logged and, with ``send_dead_letter``, dead-lettered, that send retried until the broker takes it."""
    try:
        await retry(functools.partial(handle, record.value), deadline=time.monotonic() + FOLLOW_RETRY_S)
        return
    except Exception as exc:  # noqa: BLE001 - a record's content never stops the follower
        if is_infrastructure(exc):
            log.warning("applying a record of %s failed for %.0f s (%r): passed over", record.topic,
                        FOLLOW_RETRY_S, exc)
            return
        reason = str(exc)
    log.warning("ignored a bad record on %s (partition %d, offset %d): %s", record.topic, record.partition,
                record.offset, reason[:300])
    if send_dead_letter is not None:
        dead = dead_letter(record.value, reason, record.topic, record.partition, record.offset, max_raw_bytes)
        await retry(functools.partial(send_dead_letter, dlq(record.topic), encode(dead), bounded_key(record.key)))
