"""The mount-time download sample kept in the listing store (pure logic; the remount through a
real mount is tests/test_mount_tree.py)."""
from __future__ import annotations

from types import SimpleNamespace

from terrafs.preflight import DownloadSample, _kept_sample

HOSTS = SimpleNamespace(credential_hosts=frozenset({("https", "services.terrascope.be", 443)}))
URL = "https://services.terrascope.be/download/a.tif"


def test_a_kept_sample_is_taken_back_as_it_was_kept():
    value = {"url": URL, "unlisted": [["http", "elsewhere.example", 80]]}
    assert _kept_sample(value, HOSTS) == DownloadSample(URL, frozenset({("http", "elsewhere.example", 80)}))
    assert _kept_sample({"url": None, "unlisted": []}, HOSTS) == DownloadSample(None, frozenset())


def test_a_kept_url_off_auth_hosts_or_a_malformed_entry_is_not_used():
    for value in ({"url": "https://evil.example/a.tif", "unlisted": []},
                  {"url": "http://services.terrascope.be/a.tif", "unlisted": []},
                  {"url": 3, "unlisted": []}, {"url": URL}, {"url": URL, "unlisted": [["https", "h"]]},
                  {"url": URL, "unlisted": [["https", "h", "443"]]}, [URL], None, "x"):
        assert _kept_sample(value, HOSTS) is None, value
