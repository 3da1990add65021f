from __future__ import annotations

import logging

import pytest

from ops.logs import JsonFormatter, TextFormatter
from ops.redact import MASK, redact, register_secret


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("mongodb://user:pa55word@host:27017/db", "pa55word"),
        ("postgresql://u:p%40ss@h/db", "p%40ss"),
        ("host=h password=topsecret dbname=x", "topsecret"),
        ("host=h password='with space' dbname=x", "with space"),
        ("mongodb://h/?authSource=admin&password=qwerty9", "qwerty9"),
    ],
)
def test_passwords_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


def test_registered_secret_is_masked_even_out_of_context() -> None:
    register_secret("mongodb://svc:Zebra-Unicorn-77@db1/?replicaSet=rs0")
    assert "Zebra-Unicorn-77" not in redact("auth failed for password Zebra-Unicorn-77")


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
def test_log_records_are_redacted(formatter: logging.Formatter) -> None:
    record = logging.LogRecord("t", logging.ERROR, __file__, 1,
                               "cannot connect to %s", ("postgresql://a:b1gsecret@h/d",), None)
    assert "b1gsecret" not in formatter.format(record)
