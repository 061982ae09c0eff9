"""The raw baseline for the recommender over Kafka: a bare aiokafka service that answers every request
with an empty response, no Faust, no features, no model. What it costs is the broker's two hops plus the
client; the recommender's round trip beside it says what streamrec adds.

    python -m benchmarks.echo --bootstrap 127.0.0.1:9092      # prints "ready" once it reads every partition

Run it in a process of its own, as the recommender worker is, so it does not share a GIL with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from streamrec.offsets import consumer_at_end
from streamrec.topics import RECOMMENDATIONS, REQUESTS

__all__ = ["serve"]


async def serve(bootstrap: str, stop: asyncio.Event, fetch_max_wait_ms: int = 3, requests_topic: str = REQUESTS,
                responses_topic: str = RECOMMENDATIONS) -> int:
    """Answer requests on ``requests_topic`` on ``responses_topic`` until ``stop`` is set; returns how many
    were answered."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    consumer = await consumer_at_end({"bootstrap_servers": bootstrap}, requests_topic,
                                     fetch_max_wait_ms=fetch_max_wait_ms)
    answered = 0
    try:
        print("ready", flush=True)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            sends = []
            for records in batches.values():
                for record in records:
                    try:
                        body = json.loads(record.value)
                        reply = {"request_id": str(body["request_id"]), "user_id": str(body["user_id"]), "items": []}
                    except (ValueError, KeyError, TypeError):
                        continue
                    sends.append(await producer.send(responses_topic, json.dumps(reply).encode(),
                                                     key=reply["request_id"].encode()))
            if sends:
                await asyncio.gather(*sends)
                answered += len(sends)
    finally:
        await consumer.stop()
        await producer.stop()
    return answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True, help="host:port of the broker")
    parser.add_argument("--fetch-max-wait-ms", type=int, default=3)
    parser.add_argument("--requests-topic", default=REQUESTS, help="where requests come (a bench may give it "
                        "topics of its own, to run beside the recommender on one broker)")
    parser.add_argument("--responses-topic", default=RECOMMENDATIONS)
    args = parser.parse_args()

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(args.bootstrap, stop, args.fetch_max_wait_ms, args.requests_topic, args.responses_topic)

    print(f"answered {asyncio.run(run())}", file=sys.stderr)


if __name__ == "__main__":
    main()
