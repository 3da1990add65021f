"""``mongo2pg sandbox``: serve the sandbox until interrupted."""

from __future__ import annotations

import argparse


def serve_forever(args: argparse.Namespace) -> int:
    raise NotImplementedError("the sandbox server is being built")
