"""``mongo2pg sandbox``: serve the sandbox in the foreground until SIGINT/SIGTERM.

Prints the connection URI once the port is bound (flushed, so a parent process can
read it from a pipe), then serves; one signal-handling task cancels the root scope.
"""

from __future__ import annotations

import argparse
import signal

import anyio

from ops.gctune import tune_gc
from ops.sandbox import advertised_host, serve, uri_for


async def _main(host: str, port: int, oplog_max_entries: int | None) -> None:
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, host, port, oplog_max_entries)
        print(uri_for(advertised_host(host), bound), flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                tg.cancel_scope.cancel()
                break


def serve_forever(args: argparse.Namespace) -> int:
    tune_gc()
    anyio.run(_main, args.host, args.port, args.oplog_max_entries, backend="asyncio")
    return 0
