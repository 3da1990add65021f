from __future__ import annotations

from pathlib import Path

import pytest

from cdc.errors import ConfigError
from ops.config import apply_environment, decode_config, load_config, override, render_redacted


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "m.toml"
    p.write_text(text)
    return p


def test_valid_file_decodes_into_structs(tmp_path: Path) -> None:
    p = write(tmp_path, '''
include = ["shop.*"]
[source]
uri = "mongodb://a/?replicaSet=rs0"
[target]
dsn = "postgresql://u@h/db"
[metrics]
port = 9999
''')
    cfg = load_config(p)
    assert cfg.include == ["shop.*"]
    assert cfg.metrics.port == 9999
    assert cfg.target.control_schema == "mongo2pg"


def test_misspelt_key_names_the_key_and_file(tmp_path: Path) -> None:
    p = write(tmp_path, '[source]\nuri = "mongodb://x"\nurl = "y"\n')
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.key == "source.url"
    assert info.value.source == str(p)


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    p = write(tmp_path, '[metrics]\nport = "nine"\n')
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert info.value.key == "metrics.port"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.source == str(tmp_path / "absent.toml")


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "include = [\n"))


def test_bad_include_pattern_names_its_index() -> None:
    with pytest.raises(ConfigError) as info:
        decode_config({"include": ["good.coll", "nodot"]}, source="x.toml")
    assert info.value.key == "include[1]"


def test_environment_overrides_file_and_flags_override_both() -> None:
    cfg = decode_config({"source": {"uri": "mongodb://file"}}, source="f")
    cfg = apply_environment(cfg, {"MONGO2PG_SOURCE_URI": "mongodb://env",
                                  "MONGO2PG_TARGET_DSN": "postgresql://env"})
    assert cfg.source.uri == "mongodb://env"
    assert cfg.target.dsn == "postgresql://env"
    cfg = override(cfg, source_uri="mongodb://flag", include=["a.b"])
    assert cfg.source.uri == "mongodb://flag"
    assert cfg.include == ["a.b"]


def test_rendered_config_masks_passwords() -> None:
    cfg = decode_config({"source": {"uri": "mongodb://admin:hunter22@h/?replicaSet=rs0"},
                         "target": {"dsn": "host=h user=u password=s3cr3t dbname=d"}},
                        source="f")
    out = render_redacted(cfg)
    assert "hunter22" not in out
    assert "s3cr3t" not in out
    assert "admin" in out
