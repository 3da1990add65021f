from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_help_lists_the_subcommands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for name in ("run", "sandbox", "config"):
        assert name in out.stdout


def test_missing_config_file_exits_2_with_one_line(tmp_path: Path) -> None:
    out = run_cli("run", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "missing.toml" in out.stderr
    assert "Traceback" not in out.stderr


def test_misspelt_key_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text('include = ["a.b"]\n[target]\ndns = "postgresql://x"\n')
    out = run_cli("run", "--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "target.dns" in out.stderr


def test_run_without_target_names_the_missing_key() -> None:
    out = run_cli("run", "--source", "mongodb://u:pw12345@h/", "--include", "a.b")
    assert out.returncode == 2
    assert "target.dsn" in out.stderr
    assert "pw12345" not in out.stderr
