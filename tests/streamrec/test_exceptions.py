"""Which failures are the infrastructure's (retried) and which the data's (dead-lettered at once)."""

from __future__ import annotations

import pytest

from streamrec import SchemaError
from streamrec._exceptions import is_infrastructure
from streamrec.features import FeatureStoreError


def _wrapped(cause: BaseException) -> FeatureStoreError:
    try:
        raise FeatureStoreError("push failed") from cause
    except FeatureStoreError as exc:
        return exc


def test_network_redis_and_retriable_kafka_errors_are_infrastructure() -> None:
    import redis
    from aiokafka.errors import KafkaConnectionError, RequestTimedOutError

    for exc in (ConnectionRefusedError(), TimeoutError(), redis.exceptions.ConnectionError("down"),
                redis.exceptions.TimeoutError(), redis.exceptions.BusyLoadingError(), KafkaConnectionError(),
                RequestTimedOutError()):
        assert is_infrastructure(exc), exc
        assert is_infrastructure(_wrapped(exc)), exc  # through FeatureClient's `raise ... from`


@pytest.mark.parametrize("exc", [ValueError("bad"), OverflowError(), KeyError("x"), SchemaError("x"),
                                 RecursionError(), TypeError()])
def test_data_errors_are_not(exc: BaseException) -> None:
    assert not is_infrastructure(exc)
    assert not is_infrastructure(_wrapped(exc))


def test_non_retriable_kafka_errors_are_not() -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    assert not is_infrastructure(MessageSizeTooLargeError())


def test_an_unrelated_context_does_not_count() -> None:
    try:
        try:
            raise ConnectionError("earlier")
        except ConnectionError:
            raise ValueError("the data") from None
    except ValueError as exc:
        assert not is_infrastructure(exc)
