"""The config the emulator writes for itself at start-up (issue 22): terrafs loads it as it is,
with the emulator's endpoints, the demo account, credentials for the emulator only, and a cache
and rate-limit state apart from the real service's; the file is readable by its owner only."""
from __future__ import annotations

import stat

from terrafs.config import load_config
from terrafs.emulator.server import CONFIG_NAME, write_client_config

BASE = "http://127.0.0.1:8890"


def test_the_recipe_loads_and_points_at_the_emulator_only(tmp_path):
    path = write_client_config(tmp_path, BASE)
    assert path == tmp_path / CONFIG_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    config = load_config(path, env={"HOME": str(tmp_path / "home")})
    assert config.stac_url == BASE + "/stac/"
    assert config.opensearch_url == BASE + "/catalogue/"
    assert config.token_url.startswith(BASE + "/auth/realms/terrascope/")
    assert (config.username, config.password) == ("demo", "demo")
    assert config.credential_hosts == frozenset({("http", "127.0.0.1", 8890)})
    assert config.cache_dir.is_relative_to(tmp_path)
    assert str(config.rate_limit_state).startswith(str(tmp_path))


def test_a_second_start_replaces_the_recipe_and_leaves_no_temporary_file(tmp_path):
    write_client_config(tmp_path, BASE)
    path = write_client_config(tmp_path, "http://127.0.0.1:9001")
    assert "127.0.0.1:9001" in path.read_text() and "8890" not in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == [CONFIG_NAME]
