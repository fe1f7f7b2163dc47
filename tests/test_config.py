"""Config loading: defaults, every key, one-line errors, credential order."""
from __future__ import annotations

import os
import pickle
from datetime import datetime, timezone
from pathlib import Path

import pytest

from terrafs.catalogue.model import Filter
from terrafs.config import CollectionSelection, load_config
from terrafs.text import parse_size
from terrafs.errors import ConfigError

UTC = timezone.utc


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), **extra}


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_defaults_are_the_real_services(home):
    c = load_config(env=env_for(home))
    assert c.source is None
    assert c.catalogue == "stac"
    assert c.stac_url == "https://stac.terrascope.be/"
    assert c.opensearch_url == "https://services.terrascope.be/catalogue/"
    assert c.token_url == "https://sso.terrascope.be/auth/realms/terrascope/protocol/openid-connect/token"
    assert (c.auth_method, c.client_id) == ("bearer", "public")
    assert (c.username, c.password, c.credential_source) == (None, None, None)
    assert c.cache_dir == home / ".cache/terrafs"
    assert c.cache_size == 20 * 1024**3 and c.block_size == 1024**2
    assert (c.listing_ttl, c.recent_listing_ttl) == (3600.0, 300.0)
    assert c.rate_limits == ((80, 10.0), (200, 60.0))
    assert c.layout == "default" and c.collections is None
    assert c.log_level == "INFO" and c.log_file == home / ".cache/terrafs/terrafs.log"
    assert c.refresh_token_file == home / ".config/terrafs/refresh-token"


def test_every_key_is_read(home, tmp_path):
    path = write(tmp_path / "c.yaml", """
catalogue: opensearch
endpoints:
  stac: http://127.0.0.1:5000/stac
  opensearch: http://127.0.0.1:5000/catalogue
  token: http://127.0.0.1:5000/auth/realms/terrascope/protocol/openid-connect/token
auth: {method: basic, client_id: terracatalogueclient, username: u, password: p}
cache: {dir: ~/cachedir, size: 5GB, listing_ttl: 10, recent_listing_ttl: 2.5, block_size: 256KiB}
rate_limits: [{requests: 5, seconds: 1}]
layout: platform
collections:
  - id: terrascope-s2-toc-v2
    bbox: [3.0, 50.5, 4.5, 51.5]
    start: 2020-01-01
    end: 2020-12-31
    cloud_cover: 50
    tile_ids: [31ufs]
  - TERRASCOPE_S2_NDVI_V2
log: {level: debug, file: /tmp/x.log}
""")
    c = load_config(path, env=env_for(home))
    assert c.source == path and c.catalogue == "opensearch"
    assert c.stac_url == "http://127.0.0.1:5000/stac/"
    assert c.opensearch_url == "http://127.0.0.1:5000/catalogue/"
    assert c.token_url.endswith("/openid-connect/token")
    assert (c.auth_method, c.client_id, c.username, c.password) == ("basic", "terracatalogueclient", "u", "p")
    assert c.credential_source == f"config file {path}"
    assert c.cache_dir == home / "cachedir"
    assert (c.cache_size, c.block_size) == (5 * 10**9, 256 * 1024)
    assert (c.listing_ttl, c.recent_listing_ttl) == (10.0, 2.5)
    assert c.rate_limits == ((5, 1.0),) and c.layout == "platform"
    assert c.collections == (
        CollectionSelection("terrascope-s2-toc-v2", Filter(
            bbox=(3.0, 50.5, 4.5, 51.5), start=datetime(2020, 1, 1, tzinfo=UTC),
            end=datetime(2020, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), cloud_cover_max=50.0,
            tile_ids=("31UFS",))),
        CollectionSelection("TERRASCOPE_S2_NDVI_V2", Filter()),
    )
    assert c.log_level == "DEBUG" and c.log_file == Path("/tmp/x.log")
    pickle.loads(pickle.dumps(c))  # crosses into the daemon process


def test_config_path_from_environment_and_missing_files(home, tmp_path):
    path = write(tmp_path / "c.yaml", "layout: platform\n")
    assert load_config(env=env_for(home, TERRAFS_CONFIG=str(path))).layout == "platform"
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml", env=env_for(home))
    with pytest.raises(ConfigError, match="not found"):
        load_config(env=env_for(home, TERRAFS_CONFIG=str(tmp_path / "missing.yaml")))
    # The default file is read when it exists.
    (home / ".config/terrafs").mkdir(parents=True)
    write(home / ".config/terrafs/config.yaml", "catalogue: opensearch\n")
    assert load_config(env=env_for(home)).catalogue == "opensearch"


def test_empty_file_means_defaults(home, tmp_path):
    assert load_config(write(tmp_path / "c.yaml", ""), env=env_for(home)).catalogue == "stac"


@pytest.mark.parametrize("text, key, hint", [
    ("cahce: {size: 1GiB}\n", "'cahce'", "did you mean 'cache'?"),
    ("cache: {szie: 1GiB}\n", "'cache.szie'", "did you mean 'cache.size'?"),
    ("log: {levle: INFO}\n", "'log.levle'", "did you mean 'log.level'?"),
    ("collections: [{id: x, cloudcover: 5}]\n", "'collections[0].cloudcover'", "did you mean"),
    ("rate_limits: [{requests: 1, second: 1}]\n", "'rate_limits[0].second'", "did you mean"),
    ("zzz: 1\n", "'zzz'", ""),
])
def test_misspelt_key_names_file_and_key_in_one_line(home, tmp_path, text, key, hint):
    path = write(tmp_path / "config.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path, env=env_for(home))
    msg = str(e.value)
    assert msg.startswith(f"{path}: unknown key {key}") and hint in msg and "\n" not in msg


@pytest.mark.parametrize("text, key", [
    ("catalogue: wms\n", "catalogue"),
    ("layout: tree\n", "layout"),
    ("endpoints: {stac: ftp://x/}\n", "endpoints.stac"),
    ("auth: {method: digest}\n", "auth.method"),
    ("cache: {size: lots}\n", "cache.size"),
    ("cache: {size: -5}\n", "cache.size"),
    ("cache: {block_size: 0}\n", "cache.block_size"),
    ("cache: {listing_ttl: soon}\n", "cache.listing_ttl"),
    ("cache: 5\n", "cache"),
    ("rate_limits: [{requests: 0, seconds: 1}]\n", "rate_limits[0].requests"),
    ("rate_limits: [{requests: 1, seconds: -1}]\n", "rate_limits[0].seconds"),
    ("rate_limits: 5\n", "rate_limits"),
    ("collections: [{id: x, bbox: [1, 2, 3]}]\n", "collections[0].bbox"),
    ("collections: [{id: x, bbox: [0, 60, 1, 50]}]\n", "collections[0].bbox"),
    ("collections: [{id: x, start: someday}]\n", "collections[0].start"),
    ("collections: [{id: x, start: 2020-02-01, end: 2020-01-01}]\n", "collections[0].end"),
    ("collections: [{id: x, cloud_cover: 120}]\n", "collections[0].cloud_cover"),
    ("collections: [{id: x, tile_ids: [1]}]\n", "collections[0].tile_ids"),
    ("collections: [{id: ../x}]\n", "collections[0].id"),
    ("collections: [{bbox: [1, 2, 3, 4]}]\n", "collections[0].id"),
    ("collections: [x, x]\n", "collections[1].id"),
    ("log: {level: LOUD}\n", "log.level"),
])
def test_bad_values_name_the_key(home, tmp_path, text, key):
    path = write(tmp_path / "config.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path, env=env_for(home))
    assert str(e.value).startswith(f"{path}: {key}: ") and "\n" not in str(e.value)


def test_broken_yaml_is_one_line(home, tmp_path):
    path = write(tmp_path / "c.yaml", "cache: {size: [\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, env=env_for(home))
    assert str(e.value).startswith(f"{path}: not valid YAML") and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path / "d.yaml", "- a\n- b\n"), env=env_for(home))


@pytest.mark.parametrize("text, expected", [
    (0, 0), (1234, 1234), ("1234", 1234), ("1KiB", 1024), ("1 KB", 1000), ("20GiB", 20 * 1024**3),
    ("1.5MiB", 1572864), ("2MB", 2_000_000), ("3gb", 3 * 10**9), ("7B", 7),
])
def test_parse_size_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MiB", "1 XB", "-1", -1, True, None, "1.2.3GB"])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_log_level_from_environment(home, tmp_path):
    assert load_config(env=env_for(home, TERRAFS_LOG_LEVEL="warning")).log_level == "WARNING"
    with pytest.raises(ConfigError, match="TERRAFS_LOG_LEVEL"):
        load_config(env=env_for(home, TERRAFS_LOG_LEVEL="chatty"))


def test_overrides_win_over_the_file(home, tmp_path):
    path = write(tmp_path / "c.yaml", "layout: default\ncatalogue: stac\n")
    c = load_config(path, env=env_for(home), overrides={"layout": "platform", "cache.size": "1MiB"})
    assert (c.layout, c.catalogue, c.cache_size) == ("platform", "stac", 1024**2)
    with pytest.raises(ConfigError, match="'layuot'"):
        load_config(path, env=env_for(home), overrides={"layuot": "platform"})


# ---- credentials ---------------------------------------------------------------

NETRC = "machine {host} login {user} password {pw}\n"


def test_credentials_from_environment_first(home, tmp_path):
    netrc = write(tmp_path / "netrc", NETRC.format(host="sso.terrascope.be", user="n", pw="np"))
    path = write(tmp_path / "c.yaml", "auth: {username: f, password: fp}\n")
    c = load_config(path, env=env_for(home, NETRC=str(netrc), TERRASCOPE_USERNAME="e",
                                      TERRASCOPE_PASSWORD="ep"))
    assert (c.username, c.password, c.credential_source) == ("e", "ep", "environment (TERRASCOPE_USERNAME)")


def test_credentials_from_netrc_before_config_file(home, tmp_path):
    netrc = write(tmp_path / "netrc", NETRC.format(host="services.terrascope.be", user="n", pw="np"))
    path = write(tmp_path / "c.yaml", "auth: {username: f, password: fp}\n")
    c = load_config(path, env=env_for(home, NETRC=str(netrc)))
    assert (c.username, c.password) == ("n", "np")
    assert c.credential_source == f"{netrc} (machine services.terrascope.be)"


def test_netrc_default_location_and_emulator_host(home, tmp_path):
    write(home / ".netrc", NETRC.format(host="127.0.0.1", user="demo", pw="demo"))
    path = write(tmp_path / "c.yaml", "endpoints:\n  token: http://127.0.0.1:8000/auth/token\n")
    c = load_config(path, env=env_for(home))
    assert (c.username, c.password, c.credential_source) == ("demo", "demo", "~/.netrc (machine 127.0.0.1)")


def test_netrc_for_other_hosts_is_ignored(home, tmp_path):
    netrc = write(tmp_path / "netrc", NETRC.format(host="example.org", user="x", pw="y"))
    c = load_config(env=env_for(home, NETRC=str(netrc)))
    assert (c.username, c.password, c.credential_source) == (None, None, None)


def test_broken_netrc_is_a_config_error(home, tmp_path):
    netrc = write(tmp_path / "netrc", "machine\n")
    with pytest.raises(ConfigError) as e:
        load_config(env=env_for(home, NETRC=str(netrc)))
    assert str(netrc) in str(e.value)


def test_config_file_password_needs_private_permissions(home, tmp_path):
    path = write(tmp_path / "c.yaml", "auth: {username: f, password: fp}\n", mode=0o600)
    c = load_config(path, env=env_for(home))
    assert (c.username, c.password, c.credential_source) == ("f", "fp", f"config file {path}")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as e:
        load_config(path, env=env_for(home))
    assert f"permissions 0644 for '{path}' are too open" in str(e.value)
    assert "fp" not in str(e.value).replace(str(path), "")
    # Without a password, a readable file is fine.
    write(path, "auth: {username: f}\n", mode=0o644)
    assert load_config(path, env=env_for(home)).username == "f"


def test_password_never_in_repr(home, tmp_path):
    c = load_config(env=env_for(home, TERRASCOPE_USERNAME="user", TERRASCOPE_PASSWORD="s3cr3t-pw"))
    assert c.password == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(c) and "s3cr3t-pw" not in str(c)


def test_bad_password_value_is_not_echoed(home, tmp_path):
    path = write(tmp_path / "c.yaml", "auth: {username: f, password: [s3cr3t]}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, env=env_for(home))
    assert "auth.password" in str(e.value) and "s3cr3t" not in str(e.value)
