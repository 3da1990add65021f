from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc import metrics
from cdc.errors import ConfigError
from cdc.stream import StreamConfig, matches, validate
from cdc.types import Namespace


def test_stream_metrics_follow_prometheus_conventions_and_never_label_documents() -> None:
    metrics.EVENTS_APPLIED.labels("shop.orders", "insert").inc()
    metrics.LAG.labels("main").set(0)
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest(REGISTRY).decode())}
    ours = {name: f for name, f in families.items()
            if name.startswith("mongo2pg_stream_") and not name.endswith("_created")}
    expected = {"events_applied", "batch_events", "batch_apply_duration_seconds",
                "lag_seconds", "last_applied_cluster_time_seconds", "retries",
                "dead_letters", "unknown_events", "history_lost", "ddl_events"}
    assert {name.removeprefix("mongo2pg_stream_") for name in ours} == expected
    for family in ours.values():
        for sample in family.samples:
            assert not {"id", "_id", "document", "key"} & set(sample.labels)
        if family.type == "counter" and family.samples:
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)


@pytest.mark.parametrize(("include", "config"), [
    ([], StreamConfig()),
    (["nodot"], StreamConfig()),
    (["shop.*"], StreamConfig(ddl={"bad": "mark"})),
    (["shop.*"], StreamConfig(batch_max_events=0)),
])
def test_bad_stream_settings_are_config_errors(include: list[str], config: StreamConfig
                                               ) -> None:
    with pytest.raises(ConfigError):
        validate(include, config)


def test_namespace_patterns_match_a_collection_or_a_whole_database() -> None:
    assert matches(["shop.*"], Namespace("shop", "orders"))
    assert matches(["crm.contacts"], Namespace("crm", "contacts"))
    assert not matches(["crm.contacts"], Namespace("crm", "leads"))
    assert not matches(["shop.*"], Namespace("shopping", "x"))
