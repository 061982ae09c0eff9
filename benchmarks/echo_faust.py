"""The same bare echo as ``benchmarks/echo.py``, answered from a Faust agent instead of an aiokafka group
member: issue 15 asks whether the request path could be a Faust agent on Apache Kafka. The app is built
by streamrec's own ``create_app`` (the recommender's Faust settings and Faust guards); the agent reads
each request as its own event and sends an empty answer, nothing else.

    STREAMREC_KAFKA_BOOTSTRAP_SERVERS=… python -m benchmarks.echo_faust --web-port 6099   # prints "ready"
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from streamrec.config import get_settings
from streamrec.faust_app import create_app
from streamrec.topics import RECOMMENDATIONS, REQUESTS

__all__ = ["build"]


def build(web_port: int) -> Any:
    """The echo app: one agent on the requests topic."""
    app = create_app(get_settings(), "streamrec-echo-faust", web_port)
    requests = app.topic(REQUESTS, key_serializer="raw", value_serializer="raw")
    answers = app.topic(RECOMMENDATIONS, key_serializer="raw", value_serializer="raw")

    @app.agent(requests)
    async def echo(stream: Any) -> None:
        async for value in stream:
            try:
                body = json.loads(value)
                reply = {"request_id": str(body["request_id"]), "user_id": str(body["user_id"]), "items": []}
            except (ValueError, KeyError, TypeError):
                continue
            await answers.send(key=reply["request_id"].encode(), value=json.dumps(reply).encode())

    @app.task
    async def ready() -> None:
        print("ready", flush=True)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--web-port", type=int, required=True, help="Faust's web port (loopback)")
    args = parser.parse_args()
    app = build(args.web_port)
    sys.argv = ["echo_faust", "worker", "-l", "warn", "--web-port", str(args.web_port)]
    app.main()


if __name__ == "__main__":
    main()
