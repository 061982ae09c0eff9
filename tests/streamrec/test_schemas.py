from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamrec import SchemaError
from streamrec.schemas import (
    INTERACTION_TYPES,
    MAX_MESSAGE_BYTES,
    DLQRecord,
    Interaction,
    ItemUpdate,
    ModelUpdate,
    RecommendationRequest,
    RecommendationResponse,
    decode,
    encode,
)

TS = "2026-11-01T10:00:00+00:00"
VALID = {
    Interaction: {"event_id": "e1", "user_id": "U000001", "item_id": "I000001",
                  "interaction_type": "rate", "timestamp": TS, "rating": 4, "quantity": None,
                  "context": {"device": "mobile", "session_id": "s1"}},
    ItemUpdate: {"item_id": "I000001", "stock": 0, "price": 12.5, "timestamp": TS},
    RecommendationRequest: {"request_id": "r1", "user_id": "U000001", "k": 20,
                            "context": {"timestamp": TS, "device": "desktop", "page": "home"},
                            "exclude": ["I000002"]},
    RecommendationResponse: {"request_id": "r1", "user_id": "U000001",
                             "items": [{"item_id": "I1", "score": 0.9}], "model_version": "v1",
                             "feature_age_ms": 12.0, "latency_ms": 3.5, "fallback": "popularity",
                             "filtered": {"availability": 2}},
    ModelUpdate: {"version": "v2", "path": "checkpoints/v2", "metrics": {"recall@10": 0.2},
                  "created_at": TS},
    DLQRecord: {"reason": "not JSON", "topic": "interactions", "partition": 0, "offset": 7,
                "raw": "{oops"},
}


@pytest.mark.parametrize("model", list(VALID))
def test_valid_messages_round_trip(model: type) -> None:
    parsed = decode(model, json.dumps(VALID[model]).encode())
    assert decode(model, encode(parsed)) == parsed


def test_request_defaults_and_context_extras() -> None:
    r = decode(RecommendationRequest, b'{"request_id":"r","user_id":"u","context":{"hour_hint":3}}')
    assert r.k == 10 and r.context is not None and r.context.model_extra == {"hour_hint": 3}
    assert r.context.timestamp is None


def test_timestamps_keep_their_zone() -> None:
    i = decode(Interaction, json.dumps({**VALID[Interaction], "timestamp": "2026-11-01T12:00:00+02:00"}))
    assert i.timestamp == datetime(2026, 11, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("model", "change", "field"),
    [
        (RecommendationRequest, {"k": 0}, "k"),
        (RecommendationRequest, {"k": 101}, "k"),
        (RecommendationRequest, {"k": "10"}, "k"),
        (RecommendationRequest, {"k": True}, "k"),
        (RecommendationRequest, {"request_id": ""}, "request_id"),
        (RecommendationRequest, {"user_id": "x" * 129}, "user_id"),
        (RecommendationRequest, {"exclude": ["i"] * 1001}, "exclude"),
        (RecommendationRequest, {"context": {"timestamp": "2026-11-01T10:00:00"}}, "context.timestamp"),
        (RecommendationRequest, {"context": {"nested": {"a": 1}}}, "context"),
        (RecommendationRequest, {"K": 5}, "K"),
        (Interaction, {"interaction_type": "like"}, "interaction_type"),
        (Interaction, {"rating": 6}, "rating"),
        (Interaction, {"quantity": 0}, "quantity"),
        (Interaction, {"user_id": 42}, "user_id"),
        (Interaction, {"timestamp": "yesterday"}, "timestamp"),
        (Interaction, {"user_id": "a\nb"}, "user_id"),
        (ItemUpdate, {"stock": -1}, "stock"),
    ],
)
def test_malformed_messages_name_the_field(model: type, change: dict, field: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode(model, json.dumps({**VALID[model], **change}))
    assert field in info.value.fields
    assert str(info.value).startswith(field)


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[]", b"null", b'"x"', b"1e999"])
def test_not_an_object_is_a_schema_error(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode(Interaction, raw)


def test_missing_field_is_named() -> None:
    body = dict(VALID[Interaction])
    del body["item_id"]
    with pytest.raises(SchemaError, match="item_id"):
        decode(Interaction, json.dumps(body))


def test_oversized_message_is_refused_before_parsing() -> None:
    raw = b'{"event_id":"' + b"x" * MAX_MESSAGE_BYTES + b'"}'
    with pytest.raises(SchemaError, match="bytes"):
        decode(Interaction, raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                         max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(list(VALID)),
    mutation=st.dictionaries(
        st.sampled_from(["event_id", "user_id", "item_id", "interaction_type", "timestamp", "rating",
                         "quantity", "context", "request_id", "k", "exclude", "stock", "price", "x"]),
        json_values, max_size=3),
)
def test_any_json_either_parses_or_raises_schema_error(model: type, mutation: dict) -> None:
    raw = json.dumps({**VALID[model], **mutation})
    try:
        parsed = decode(model, raw)
    except SchemaError as exc:
        assert exc.fields or str(exc)
    else:
        assert decode(model, encode(parsed)) == parsed


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode(Interaction, raw)


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 100), t=st.sampled_from(INTERACTION_TYPES),
       uid=st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=64))
def test_valid_values_are_accepted(k: int, t: str, uid: str) -> None:
    assert decode(RecommendationRequest, json.dumps({"request_id": "r", "user_id": uid, "k": k})).k == k
    assert decode(Interaction, json.dumps({**VALID[Interaction], "interaction_type": t,
                                            "user_id": uid})).user_id == uid


# ---- hostile values (issue 17): the value space is closed, DLQ records are bounded -------------------
def _interaction(**changes: object) -> bytes:
    return json.dumps({**VALID[Interaction], **changes}).encode()


@pytest.mark.parametrize("when", ["9999-12-31T23:59:59+00:00", "0001-01-01T00:00:00+05:00", "1900-01-01T00:00:00Z",
                                  "2999-01-01T00:00:00Z"])
def test_timestamps_outside_the_window_are_refused_for_every_dated_message(when: str) -> None:
    for model, raw in ((Interaction, _interaction(timestamp=when)),
                       (ItemUpdate, json.dumps({**VALID[ItemUpdate], "timestamp": when}).encode()),
                       (RecommendationRequest, json.dumps({**VALID[RecommendationRequest],
                                                           "context": {"timestamp": when}}).encode()),
                       (ModelUpdate, json.dumps({**VALID[ModelUpdate], "created_at": when}).encode())):
        with pytest.raises(SchemaError, match="timestamp") as info:
            decode(model, raw)
        assert "timestamp" in info.value.fields[0] or "created_at" in info.value.fields[0]


def test_the_window_is_configurable_and_measured_from_now() -> None:
    from datetime import timedelta

    from streamrec.schemas import TimeWindow

    now = datetime.now(UTC)
    soon = (now + timedelta(minutes=30)).isoformat()
    assert decode(Interaction, _interaction(timestamp=soon)).timestamp.year == now.year
    with pytest.raises(SchemaError, match="in the future"):
        decode(Interaction, _interaction(timestamp=soon), TimeWindow(max_future_skew_s=60))
    old = TimeWindow(floor=datetime(1900, 1, 1, tzinfo=UTC))
    assert decode(Interaction, _interaction(timestamp="1950-01-01T00:00:00Z"), old).timestamp.year == 1950


def test_tombstones_nan_and_deep_json_are_schema_errors_naming_the_problem() -> None:
    with pytest.raises(SchemaError, match="tombstone"):
        decode(Interaction, None)
    raw = _interaction(rating=1.0).replace(b"1.0", b"NaN")
    with pytest.raises(SchemaError, match="NaN") as info:
        decode(Interaction, raw)
    assert info.value.fields == ("rating",)
    with pytest.raises(SchemaError, match="JSON"):
        decode(RecommendationRequest, b"[" * 10_000 + b"]" * 10_000)
    with pytest.raises(SchemaError, match="JSON"):
        decode(RecommendationRequest, b'{"request_id":"r","context":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001)


@pytest.mark.parametrize("value", [b"\xff" * 900_000, b'"' * 900_000, b"\x01" * 900_000, "é".encode() * 450_000,
                                   b"x" * 100])
def test_dead_letter_records_are_bounded_whatever_the_value(value: bytes) -> None:
    import hashlib

    from streamrec.schemas import dead_letter

    record = dead_letter(value, "why: " + "r" * 5000, "interactions", 3, 42, max_raw_bytes=16 * 1024)
    wire = encode(record)
    assert len(wire) <= 16 * 1024 + 2048 + 400  # raw + reason + the small fields
    assert (record.partition, record.offset, record.topic) == (3, 42, "interactions")
    if len(value) > 16 * 1024:
        assert record.truncated and record.raw_bytes == len(value)
        assert record.raw_sha256 == hashlib.sha256(value).hexdigest()
        assert value.decode("utf-8", "backslashreplace").startswith(record.raw)
    else:
        assert record.raw == value.decode() and record.truncated is None
    assert DLQRecord.model_validate_json(wire) == record


def test_a_tombstone_dead_letters_as_such() -> None:
    from streamrec.schemas import dead_letter

    record = dead_letter(None, "no value", "item-updates", 0, 1)
    assert record.raw == "" and record.reason.startswith("tombstone")


@pytest.mark.parametrize("value, ids", [
    (b'{"request_id": "r-1", "user_id": "U1", "pad": "' + b"x" * 900_000 + b'"}',
     {"request_id": "r-1", "user_id": "U1"}),
    (b'{"request_id":"r-2","deep":' + b"[" * 10_000, {"request_id": "r-2"}),
    (b'{"request_id": 7}', {"request_id": "7"}),
    (b'{"request_id": "\\ud800x"}', {"request_id": "?x"}),
    (None, {}),
    (b"\xff\xfe", {}),
])
def test_ids_are_recovered_from_requests_that_cannot_be_parsed(value: bytes | None, ids: dict) -> None:
    from streamrec.schemas import recover_ids

    assert recover_ids(value) == ids
