"""Run a tailer in this process until it is killed: ``python -m tests.support.tailer_proc``.

Arguments: MongoDB URI, PostgreSQL DSN, then the namespace patterns. Prints ``started``
once the tailer reported its start time, then ``applied <packed time>`` after each
step that moved the checkpoint, so a test can SIGKILL it at chosen points.
"""

from __future__ import annotations

import sys

import anyio

from cdc.stream import StreamConfig, Tailer
from tests.support.tailing import mongo, open_sink


async def main(uri: str, dsn: str, include: list[str]) -> None:
    client = mongo(uri)
    async with open_sink(dsn) as sink:
        tailer = Tailer(client=client, sink=sink, include=include,
                        config=StreamConfig(batch_max_events=50, max_await_ms=100))
        async with anyio.create_task_group() as tg:
            await tg.start(tailer.run)
            print("started", flush=True)
            last = tailer.last_applied
            while True:
                await anyio.sleep(0.01)
                if tailer.last_applied != last:
                    last = tailer.last_applied
                    print("applied", last.packed, flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3:])
