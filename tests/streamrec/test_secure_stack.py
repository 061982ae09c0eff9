"""The secured stack (issue #30): `stack up --secure` runs Apache Kafka on SASL_SSL (SCRAM-SHA-512) and Redis on
TLS with a password, and the whole path runs through the ordinary client settings it exports (KAFKA_SECURITY_PROTOCOL,
KAFKA_SASL_*, KAFKA_SSL_CAFILE, a `rediss://` REDIS_URL): replay, the features worker (Faust), the recommender,
`request`, the trainer's announcement. A wrong password or an untrusted certificate is one line naming the setting,
in seconds, never the secret."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from streamrec import StreamrecError, kafka_clients
from streamrec.config import Settings, load_settings
from streamrec.features import require_redis
from streamrec.shell import stack as _stack
from streamrec.shell.workers import settings_env
from tests.helpers import Worker, ask, replay_to_ground_truth, sourced, wait_until

pytestmark = pytest.mark.parametrize("env_stack", ["secure"], indirect=True)


def _embedded(client: Settings) -> Settings:
    """The stack's own settings (nothing exported) behind a client's settings of it."""
    return load_settings(stack_dir=client.stack_dir, stack_secure=True, broker="kafka", kafka_brokers=1,
                         embedded_kafka_port=int(client.bootstrap_servers.rsplit(":", 1)[1]),
                         embedded_redis_port=urlsplit(client.redis).port, kafka_bootstrap_servers=None,
                         redis_url=None)


def _secrets(settings: Settings) -> list[str]:
    folder = settings.stack_dir / "secure"
    return [(folder / name).read_text().strip() for name in ("kafka-password", "redis-password", "broker-password")]


def test_the_whole_path_runs_on_sasl_ssl_and_tls_redis(env_stack: Settings, trained_checkpoint: Path,
                                                       worker_factory: Callable[..., Worker]) -> None:
    assert env_stack.kafka_security_protocol == "SASL_SSL" and env_stack.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert env_stack.redis.startswith("rediss://") and env_stack.kafka_ssl_cafile is not None
    # what `stack status` says of it, from the stack's own settings (nothing exported)
    embedded = _embedded(env_stack)
    lines = [s.line() for s in _stack.status(embedded)]
    assert all(s.running for s in _stack.status(embedded)), lines
    assert "SASL_SSL" in lines[0] and "TLS + password" in lines[1], lines

    worker = worker_factory(env_stack)
    truth = replay_to_ground_truth(env_stack, worker)

    shutil.copytree(trained_checkpoint, env_stack.checkpoint_dir)
    recommender = worker_factory(env_stack, app="recommender")
    answers = ask(env_stack, list(truth)[:5], k=5, tag="s")
    assert all(a.error is None and len(a.items) == 5 and a.feature_age_ms is not None for a in answers), answers

    # the trainer reads the topic and announces its model over SASL_SSL; the recommender swaps to it
    run = subprocess.run([sys.executable, "-m", "streamrec", "trainer", "--once", "--epochs", "1", "--tolerance", "1",
                          "--threads", "1", "--nice", "0"], env=settings_env(env_stack), capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0 and "promoted v2" in run.stdout + run.stderr, run.stdout + run.stderr
    wait_until(lambda: recommender.status()["model_version"] == "v2", 60, "the recommender to swap to v2")
    assert recommender.status()["errors"] == 0

    # no secret in a log, a pid file or a config outside the secure folder but the broker's own
    leaks = [(str(path), n) for path in env_stack.stack_dir.rglob("*") if path.is_file() and "secure" not in path.parts
             and path.name != "server.properties" for n, secret in enumerate(_secrets(env_stack))
             if secret in path.read_text(errors="replace")]
    assert not leaks, leaks
    for path in (worker.log, recommender.log):
        assert not any(secret in Path(path).read_text(errors="replace") for secret in _secrets(env_stack)), path


def test_exports_hold_no_secret_and_a_wrong_one_is_one_line_naming_the_setting(env_stack: Settings) -> None:
    """`stack up --secure` prints a line to source and the names it sets, no value: they are in client.env
    (0600), the passwords read from their files when it is sourced. A wrong password, an untrusted certificate
    or TLS on one side only is one line naming the setting, in seconds, never a secret."""
    secrets = _secrets(env_stack)
    folder = env_stack.stack_dir / "secure"
    assert all((p.stat().st_mode & 0o077) == 0 for p in folder.iterdir()), "the secure folder must be private"
    assert (folder.stat().st_mode & 0o077) == 0
    env = {k: v for k, v in settings_env(_embedded(env_stack)).items()
           if not k.startswith(("KAFKA_", "REDIS_")) and k not in ("STREAMREC_BROKER", "STREAMREC_SECURE")}
    run = subprocess.run([sys.executable, "-m", "streamrec", "stack", "up", "--secure"], env=env,  # Kafka implied
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not any(s in run.stdout + run.stderr for s in secrets)
    assert f". {folder / 'client.env'}" in run.stdout
    got = sourced(folder / "client.env")
    assert got["KAFKA_SASL_PASSWORD"] == secrets[0]
    assert got["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and got["REDIS_URL"] == env_stack.redis

    redis_ca = f"?ssl_ca_certs={env_stack.kafka_ssl_cafile}"
    redis_pw = secrets[1]
    wrong = {
        "KAFKA_SASL_PASSWORD": env_stack.model_copy(update={"kafka_sasl_password": SecretStr(secrets[1])}),
        "KAFKA_SSL_CAFILE": env_stack.model_copy(update={"kafka_ssl_cafile": None}),
        "KAFKA_SECURITY_PROTOCOL": env_stack.model_copy(update={"kafka_security_protocol": "SSL"}),
    }
    for setting, settings in wrong.items():
        with pytest.raises(StreamrecError) as refused:
            kafka_clients.require_reachable(settings)
        assert setting in str(refused.value) and not any(s in str(refused.value) for s in secrets), refused.value
    port = urlsplit(env_stack.redis).port
    for url, says in ((f"rediss://:{secrets[0]}@127.0.0.1:{port}/0{redis_ca}", "refused the password in REDIS_URL"),
                      (f"rediss://:{redis_pw}@127.0.0.1:{port}/0", "ssl_ca_certs"),
                      (f"redis://:{redis_pw}@127.0.0.1:{port}/0", "rediss://")):
        with pytest.raises(StreamrecError) as refused:
            require_redis(load_settings(redis_url=url, stack_dir=env_stack.stack_dir))
        assert says in str(refused.value) and not any(s in str(refused.value) for s in secrets), refused.value

    # through the CLI: one `error:` line, in seconds (not kafka-python's 30 s of retries), no secret
    env = {**settings_env(env_stack), "KAFKA_SASL_PASSWORD": "not-the-password"}
    run = subprocess.run([sys.executable, "-m", "streamrec", "replay", "--limit", "10"], env=env,
                         capture_output=True, text=True, timeout=25)
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "KAFKA_SASL_PASSWORD" in lines[0] and "not-the-password" not in lines[0], lines

