"""A throwaway PostgreSQL cluster: initdb + pg_ctl on a free port and a private socket dir.

Used by ``make demo`` and the test fixtures. ``initdb`` refuses to run as root, so when
the caller is root the data directory is owned by, and the server run as, the
unprivileged ``postgres`` account (``runuser``). The server is tuned for throwaway use
(``fsync=off``): never point it at data you want to keep.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cdc.errors import ConfigError


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (Debian's layout or PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    raise ConfigError("PostgreSQL server binaries (initdb) not found; run 'make pg-binaries'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """One throwaway cluster. ``start()`` returns a superuser DSN; ``stop()`` removes it."""

    def __init__(self, base_dir: str | None = None, user: str = "postgres"):
        self.bin = find_pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="mongo2pg-pg-", dir=base_dir))
        self.data = self.root / "data"
        self.sockdir = self.root / "sock"
        self.port = free_port()
        self.user = user
        self._as_other = os.geteuid() == 0
        self.started = False

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._as_other:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        self.sockdir.mkdir(parents=True)
        if self._as_other:
            pw = pwd.getpwnam("postgres")
            os.chmod(self.root, 0o755)
            for p in (self.root, self.sockdir):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                  "--no-sync", "-E", "UTF8", "--locale=C")
        opts = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200 -c shared_buffers=256MB")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w",
                  "-l", str(self.root / "server.log"), "start")
        self.started = True
        return self.dsn

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def temp_postgres() -> Iterator[str]:
    pg = TempPostgres()
    try:
        yield pg.start()
    finally:
        pg.stop()
