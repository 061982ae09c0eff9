"""The Kafka client layer as pure functions: what each broker gets (no broker needed)."""

from __future__ import annotations

from pathlib import Path

from streamrec import load_settings
from streamrec.kafka_clients import aio_config, faust_broker, ordered, python_config, rdkafka_config


def test_per_user_order_on_retry_is_kept_by_idempotence_on_kafka_and_one_request_in_flight_on_tansu() -> None:
    kafka = ordered(load_settings(broker="kafka", kafka_bootstrap_servers=None))
    external = ordered(load_settings(broker="tansu", kafka_bootstrap_servers="broker:9092"))
    tansu = ordered(load_settings(broker="tansu", kafka_bootstrap_servers=None))
    assert kafka == external == {"enable_idempotence": True, "max_in_flight_requests_per_connection": 5}
    assert tansu["max_in_flight_requests_per_connection"] == 1 and "enable_idempotence" not in tansu


def test_every_client_kind_gets_the_same_cluster_and_credentials() -> None:
    settings = load_settings(kafka_bootstrap_servers="a:9092,b:9092", kafka_security_protocol="SASL_PLAINTEXT",
                             kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="u", kafka_sasl_password="pw")
    blocking, aio, faust = python_config(settings), aio_config(settings), faust_broker(settings)
    assert blocking["bootstrap_servers"] == ["a:9092", "b:9092"] and aio["bootstrap_servers"] == "a:9092,b:9092"
    assert faust["broker"] == ["kafka://a:9092", "kafka://b:9092"]
    for config in (blocking, aio):
        assert (config["security_protocol"], config["sasl_mechanism"], config["sasl_plain_username"],
                config["sasl_plain_password"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-256", "u", "pw")
    credentials = faust["broker_credentials"]
    assert (credentials.username, credentials.password, credentials.mechanism.value) == ("u", "pw", "SCRAM-SHA-256")


def test_plaintext_has_no_credentials() -> None:
    settings = load_settings(kafka_bootstrap_servers="a:9092")
    assert faust_broker(settings)["broker_credentials"] is None
    assert "sasl_mechanism" not in python_config(settings) and "ssl_context" not in aio_config(settings)


def test_the_load_generator_s_librdkafka_config_carries_the_same_cluster_and_security() -> None:
    plain = rdkafka_config(load_settings(kafka_bootstrap_servers="a:9092,b:9092"))
    assert plain == {"bootstrap.servers": "a:9092,b:9092", "security.protocol": "plaintext"}
    secured = rdkafka_config(load_settings(
        kafka_bootstrap_servers="a:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="svc", kafka_sasl_password="s3cret"))
    assert secured == {"bootstrap.servers": "a:9093", "security.protocol": "sasl_ssl",
                       "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "svc", "sasl.password": "s3cret",
                       "ssl.ca.location": "probe"}


def test_a_ca_file_is_what_every_client_kind_trusts(tmp_path: Path) -> None:
    """KAFKA_SSL_CAFILE reaches kafka-python, aiokafka/Faust (their TLS context) and librdkafka; unset, each
    trusts the system's CAs."""
    import ssl

    from streamrec.shell import secure

    ca = secure.make(load_settings(stack_dir=tmp_path)).ca  # a real CA certificate, so the context loads it
    settings = load_settings(kafka_bootstrap_servers="a:9093", kafka_security_protocol="SASL_SSL",
                             kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="u", kafka_sasl_password="p",
                             kafka_ssl_cafile=str(ca))
    assert python_config(settings)["ssl_cafile"] == str(ca)
    assert rdkafka_config(settings)["ssl.ca.location"] == str(ca)
    context = aio_config(settings)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("organizationName", "streamrec"),),
                                                                (("commonName", "streamrec stack CA"),))]
    assert faust_broker(settings)["broker_credentials"].ssl_context.get_ca_certs() == context.get_ca_certs()
    system = load_settings(kafka_bootstrap_servers="a:9093", kafka_security_protocol="SSL")
    assert "ssl_cafile" not in python_config(system) and rdkafka_config(system)["ssl.ca.location"] == "probe"
