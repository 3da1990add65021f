"""The command table and the context every command handler receives.

Handlers register with :func:`command` under one or more names; ``write=True`` marks
commands that ``setUserWriteBlockMode`` refuses and that run inside a transaction's
writer. A handler returns the reply body (a dict; raw documents inside it as
``RawBSONDocument``) or an awaitable of one, and raises
:class:`~ops.sandbox.errors.CommandError` for ``ok: 0`` replies.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ops.sandbox.errors import CommandError
from ops.sandbox.state import Sandbox, Writer
from ops.sandbox.store import Collection

if TYPE_CHECKING:
    from ops.sandbox.txn import Transaction

Reply = dict[str, Any]


@dataclass
class Connection:
    """What the server knows about one client connection."""

    id: int
    app_name: str | None = None
    peer: str = ""
    closing: bool = False


@dataclass
class Ctx:
    sb: Sandbox
    name: str
    body: dict[str, Any]
    db: str
    conn: Connection
    sequences: dict[str, list[bytes]] = field(default_factory=dict)
    txn: Transaction | None = None

    @property
    def writer(self) -> Writer:
        return Writer(self.sb, self.txn)

    def collection(self, name: str | None = None, create: bool = False) -> Collection | None:
        return self.writer.collection(self.db, name or self.coll_name, create)

    @property
    def coll_name(self) -> str:
        value = self.body[self.name]
        if not isinstance(value, str):
            raise CommandError(73, f"collection name has invalid type {type(value).__name__}")
        return value

    @property
    def ns(self) -> str:
        return f"{self.db}.{self.coll_name}"


Handler = Callable[[Ctx], Reply | Awaitable[Reply]]


@dataclass(frozen=True)
class Spec:
    handler: Handler
    write: bool


COMMANDS: dict[str, Spec] = {}


def command(*names: str, write: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for name in names:
            COMMANDS[name] = Spec(fn, write)
        return fn

    return register
