"""Secret redaction for anything that leaves the process: logs, status, errors, metrics.

Connection strings are the secrets mongo2pg handles. :func:`redact` masks the password
of URL-style (``scheme://user:pass@host``) and key/value (``password=...``) strings, and
the password of every connection string registered with :func:`register_secret` (the
source URI and target DSN are registered at startup), wherever it appears later.
"""

from __future__ import annotations

import re
import threading

MASK = "***"
_URL_PASSWORD = re.compile(
    r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?=@)"
)
_KV_PASSWORD = re.compile(r"(?P<pre>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)
_QUERY_SECRET = re.compile(
    r"(?P<pre>[?&](?:password|authMechanismProperties|tlsCertificateKeyFilePassword)=)"
    r"(?P<pw>[^&\s]*)",
    re.I,
)

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask ``value`` (and its password part) wherever it appears from now on."""
    if not value:
        return
    with _lock:
        for pattern in (_URL_PASSWORD, _KV_PASSWORD, _QUERY_SECRET):
            for m in pattern.finditer(value):
                pw = m.group("pw")
                if len(pw) >= 3 and pw != MASK:
                    _secrets.add(pw)


def redact(text: str) -> str:
    """Return ``text`` with passwords and registered secrets masked."""
    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)
    text = _KV_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)
    text = _QUERY_SECRET.sub(lambda m: m.group("pre") + MASK, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text
