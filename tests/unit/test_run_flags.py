"""``mongo2pg run`` flags override the file: metrics port, workers, throttle."""

from __future__ import annotations

from pathlib import Path

from ops.cli import _run_overrides, build_parser, effective_config


def test_run_flags_override_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('include = ["a.*"]\n[backfill]\nworkers = 2\nthrottle_docs_per_second = 5\n'
                   "[metrics]\nport = 1234\n")
    args = build_parser().parse_args([
        "run", "--config", str(cfg), "--include", "b.c", "--workers", "7",
        "--throttle", "250", "--metrics-port", "0"])
    config = _run_overrides(effective_config(args), args)
    assert config.include == ["b.c"]
    assert config.backfill.workers == 7
    assert config.backfill.throttle_docs_per_second == 250
    assert config.metrics.port == 0


def test_run_without_a_file_uses_defaults_and_flags() -> None:
    args = build_parser().parse_args([
        "run", "--source", "mongodb://h/?replicaSet=rs0", "--target", "postgresql://u@h/d",
        "--include", "db.*"])
    config = _run_overrides(effective_config(args), args)
    assert config.include == ["db.*"]
    assert config.backfill.workers == 4 and config.metrics.port == 9187
    assert config.mapping.rules == ()
