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


def test_json_formatter_writes_one_object_per_line_with_fields() -> None:
    import json

    record = logging.LogRecord("cdc.stream", logging.INFO, __file__, 1, "batch applied", (),
                               None)
    record.fields = {"events": 3, "ns": "shop.orders"}
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "batch applied"
    assert doc["level"] == "info"
    assert doc["events"] == 3
    assert doc["ns"] == "shop.orders"
