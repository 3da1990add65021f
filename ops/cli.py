"""The ``mongo2pg`` command line.

Subcommands register themselves in :data:`COMMANDS`; each gets the parsed arguments and
returns an exit code. A :class:`~cdc.errors.ConfigError` anywhere becomes one line on
stderr and exit code 2 (no traceback); a :class:`~cdc.errors.ControlError` exit code 3.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from cdc.errors import ConfigError, ControlError
from ops.config import Config, load_config, override, render_redacted, require
from ops.logs import setup_logging
from ops.redact import redact, register_secret

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]
            ) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = (help_text, configure, fn)
        return fn

    return register


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="TOML configuration file")
    p.add_argument("--source", dest="source_uri", help="MongoDB URI (overrides the file)")
    p.add_argument("--target", dest="target_dsn", help="PostgreSQL DSN (overrides the file)")
    p.add_argument("--include", action="append", default=[], metavar="NS",
                   help="namespace to migrate, 'db.coll' or 'db.*' (repeatable)")


def effective_config(args: argparse.Namespace) -> Config:
    """File, then environment, then flags; secrets registered for redaction."""
    config = load_config(args.config)
    config = override(config, source_uri=args.source_uri, target_dsn=args.target_dsn,
                      include=args.include)
    register_secret(config.source.uri)
    register_secret(config.target.dsn)
    return config


@command("config", "check a configuration and print it with secrets masked", _config_args)
def _config_cmd(args: argparse.Namespace) -> int:
    config = effective_config(args)
    print(render_redacted(config))
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--metrics-port", type=int, default=None,
                   help="port of /metrics, /livez, /readyz (0 = any free port)")
    p.add_argument("--workers", type=int, default=None, help="backfill workers of this process")
    p.add_argument("--throttle", type=float, default=None, metavar="DOCS_PER_S",
                   help="backfill documents per second of this process (0 = unlimited)")


def _run_overrides(config: Config, args: argparse.Namespace) -> Config:
    import msgspec

    if args.metrics_port is not None:
        config = msgspec.structs.replace(
            config, metrics=msgspec.structs.replace(config.metrics, port=args.metrics_port))
    backfill = config.backfill
    if args.workers is not None:
        backfill = msgspec.structs.replace(backfill, workers=args.workers)
    if args.throttle is not None:
        backfill = msgspec.structs.replace(backfill, throttle_docs_per_second=args.throttle)
    return msgspec.structs.replace(config, backfill=backfill)


@command("run", "run the migration daemon (CDC + backfill + verify + control)", _run_args)
def _run_cmd(args: argparse.Namespace) -> int:
    config = _run_overrides(effective_config(args), args)
    require(config)
    setup_logging(args.log_format or config.log.format, config.log.level)
    from ops.daemon import run_daemon

    return run_daemon(config, reload=lambda: _run_overrides(effective_config(args), args))


def _recopy_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--namespace", required=True, metavar="DB.COLL",
                   help="the collection to copy again")
    p.add_argument("--id", dest="ids", action="append", default=[], metavar="EJSON",
                   help="only this _id, as Extended JSON, e.g. 42, '\"a\"' or"
                        " '{\"$oid\": \"...\"}' (repeatable)")
    p.add_argument("--ids-file", default=None, metavar="FILE",
                   help="only the _ids in FILE, one Extended JSON value per line")
    p.add_argument("--workers", type=int, default=None, help="chunks copied at once")
    p.set_defaults(metrics_port=None, throttle=None)  # the run overrides it does not take


@command("recopy", "copy a collection, or some of its documents, again (safe beside a"
         " running daemon)", _recopy_args)
def _recopy_cmd(args: argparse.Namespace) -> int:
    import anyio

    from ops.recopy import check_namespace, parse_ids, read_ids_file, recopy

    config = _run_overrides(effective_config(args), args)
    require(config)
    namespace = check_namespace(args.namespace)
    ids: list[object] | None = None
    if args.ids or args.ids_file:
        ids = parse_ids(args.ids, "--id")
        if args.ids_file:
            ids += read_ids_file(args.ids_file)
    setup_logging(args.log_format or config.log.format, config.log.level)
    copied = anyio.run(recopy, config, namespace, ids)
    print(f"{namespace}: {copied} documents copied again")
    return 0


def _sandbox_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=27017)
    p.add_argument("--oplog-max-entries", type=int, default=None)


@command("sandbox", "serve the MongoDB-compatible sandbox replica set", _sandbox_args)
def _sandbox_cmd(args: argparse.Namespace) -> int:
    from ops.sandbox.cli import serve_forever

    return serve_forever(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mongo2pg",
        description="Live, zero-downtime migration from MongoDB to PostgreSQL.")
    parser.add_argument("--log-format", choices=["text", "json"], default=None,
                        help="log as readable text (default on a terminal) or JSON lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, _fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        configure(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_format or "text")
    try:
        return COMMANDS[args.command][2](args)
    except ConfigError as exc:
        print(redact(exc.one_line()), file=sys.stderr)
        return 2
    except ControlError as exc:
        print(redact(f"refused ({exc.code}): {exc}"), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
