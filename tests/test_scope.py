"""The lines scope.py writes about hosts that get no credentials (pure functions; one config file read back)."""
from __future__ import annotations

from terrafs.config import load_config
from terrafs.remote.scope import DEFAULT_SCOPE, CredentialScope, host_entry, unlisted_hosts_note
from terrafs.text import origin_of, parse_origin


def test_host_entry_is_what_auth_hosts_reads_back():
    for url in ("https://services.terrascope.be/x", "https://mirror.example:8443/x", "http://127.0.0.1:8080/x",
                "http://[::1]:8080/x"):
        origin = origin_of(url)
        assert parse_origin(host_entry(origin)) == origin, host_entry(origin)


def test_the_note_names_the_host_and_a_config_line_that_works(tmp_path):
    origin = origin_of("http://127.0.0.1:8080/download/a.tif")
    note = unlisted_hosts_note([origin])
    assert "\n" not in note and "http://127.0.0.1:8080" in note and "auth.hosts" in note, note
    snippet = note[note.index("auth: {"):-1]
    config = tmp_path / "config.yaml"
    config.write_text(snippet + "\n")  # the line pasted into a config file as it is
    assert load_config(config, env={"HOME": str(tmp_path)}).credential_hosts == {origin}, snippet


def test_the_note_stays_one_short_line_for_many_hosts():
    note = unlisted_hosts_note([origin_of(f"https://h{i}.example/x") for i in range(40)])
    assert "and 37 more" in note and len(note) < 400, note


def test_a_refused_host_is_told_in_the_error_only_when_it_got_no_credentials():
    scope = CredentialScope([origin_of("http://127.0.0.1:8080/")])
    assert scope.unsent("http://127.0.0.1:8080/download/a.tif") is None
    why = DEFAULT_SCOPE.unsent("http://127.0.0.1:9/a") or ""
    assert "http://127.0.0.1:9" in why and "not in auth.hosts" in why, why
