"""Message schemas shared by producers, stream agents and the CLI (see CONTRACT's topic table).

Inputs from Kafka are validated strictly: unknown top-level fields, wrong types, values out of range
and oversized strings or lists are rejected with a :class:`SchemaError` naming the field. Use
:func:`decode` to go from raw bytes to a model and :func:`encode` to go back.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._exceptions import SchemaError

__all__ = [
    "INTERACTION_TYPES", "MAX_MESSAGE_BYTES", "InteractionType", "Interaction", "ItemUpdate",
    "RequestContext", "RecommendationRequest", "ScoredItem", "ErrorInfo", "RecommendationResponse",
    "ModelUpdate", "DLQRecord", "decode", "encode",
]

INTERACTION_TYPES: tuple[str, ...] = ("positive_view", "negative_view", "cart", "purchase", "rate")
InteractionType = Literal["positive_view", "negative_view", "cart", "purchase", "rate"]

# A recommender message is a few hundred bytes; anything near a megabyte is an attack or a bug.
MAX_MESSAGE_BYTES = 64 * 1024

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]
Short = Annotated[str, Field(min_length=1, max_length=256)]


def _check_small_mapping(value: dict[str, Any] | None, limit: int = 32) -> dict[str, Any] | None:
    """Free-form context stays small and flat enough to log and to store."""
    if value is None:
        return None
    if len(value) > limit:
        raise ValueError(f"at most {limit} keys allowed, got {len(value)}")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError(f"key {key[:20]!r}... longer than 64 characters")
        if isinstance(item, (dict, list)) or (isinstance(item, str) and len(item) > 256):
            raise ValueError(f"value of {key!r} must be a scalar (string ≤256 chars, number, bool)")
    return value


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Interaction(_Message):
    """One user event on the ``interactions`` topic, keyed by user_id."""

    event_id: Id
    user_id: Id
    item_id: Id
    interaction_type: InteractionType
    timestamp: AwareDatetime
    rating: Annotated[float, Field(ge=1, le=5)] | None = None
    quantity: Annotated[int, Field(ge=1, le=1000)] | None = None
    context: dict[str, Any] | None = None

    _ctx = field_validator("context")(_check_small_mapping)

    @field_validator("rating", mode="before")
    @classmethod
    def _int_rating(cls, value: Any) -> Any:
        # JSON has one number type: a rating of 4 arrives as an int and is a fine float.
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ItemUpdate(_Message):
    """A stock or price change on the ``item-updates`` topic, keyed by item_id."""

    item_id: Id
    stock: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    price: Annotated[float, Field(ge=0, le=10_000_000)] | None = None
    timestamp: AwareDatetime

    @field_validator("price", mode="before")
    @classmethod
    def _int_price(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class RequestContext(BaseModel):
    """Where and when a request is made; extra scalar keys are kept for contextual rules."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    timestamp: AwareDatetime | None = None
    device: Annotated[str, Field(min_length=1, max_length=32)] | None = None

    def model_post_init(self, __context: Any) -> None:
        _check_small_mapping(self.model_extra)


class RecommendationRequest(_Message):
    """A request on ``recommendation-requests``, keyed by user_id."""

    request_id: Id
    user_id: Id
    k: Annotated[int, Field(ge=1, le=100)] = 10
    context: RequestContext | None = None
    exclude: Annotated[list[Id], Field(max_length=1000)] | None = None


class ScoredItem(_Message):
    item_id: Id
    score: float


class ErrorInfo(_Message):
    code: Annotated[str, Field(min_length=1, max_length=64)]
    message: Annotated[str, Field(max_length=1024)]


class RecommendationResponse(_Message):
    """The answer on ``recommendations``, keyed by request_id."""

    request_id: Annotated[str, Field(max_length=128)]
    user_id: Annotated[str, Field(max_length=128)] | None = None
    items: list[ScoredItem] = Field(default_factory=list)
    model_version: str | None = None
    feature_age_ms: float | None = None
    latency_ms: float | None = None
    fallback: str | None = None
    filtered: dict[str, int] | None = None
    error: ErrorInfo | None = None


class ModelUpdate(_Message):
    """A promoted checkpoint announced on ``model-updates``, keyed by version."""

    version: Short
    path: Short
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: AwareDatetime


class DLQRecord(_Message):
    """What ``<topic>.dlq`` holds for a message that could not be used. ``raw`` is the value as text."""

    reason: Annotated[str, Field(max_length=2048)]
    topic: str
    partition: int
    offset: int
    raw: str


M = TypeVar("M", bound=BaseModel)


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(message)"


def decode(model: type[M], raw: bytes | str) -> M:
    """Parse JSON bytes into ``model``; any problem raises SchemaError naming the field(s)."""
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > MAX_MESSAGE_BYTES:
        raise SchemaError(f"message is {size} bytes, more than the {MAX_MESSAGE_BYTES} allowed")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        fields = tuple(_where(e["loc"]) for e in errors)
        first = errors[0]
        if first["type"] == "json_invalid":
            raise SchemaError(f"not valid JSON: {first['msg']}", fields=()) from None
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SchemaError(f"{_where(first['loc'])}: {first['msg']}{more}", fields=fields) from None
    except UnicodeDecodeError as exc:
        raise SchemaError(f"not UTF-8: {exc.reason}") from None


def encode(message: BaseModel) -> bytes:
    """Serialize a message as compact UTF-8 JSON, leaving out optional fields that were never set."""
    return message.model_dump_json(exclude_unset=True).encode()


def loads_any(raw: bytes) -> Any:
    """Best-effort JSON read used to recover ids from messages that failed validation."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def utc_now() -> datetime:
    """Aware UTC now; every timestamp streamrec writes carries its zone."""

    return datetime.now(UTC)
