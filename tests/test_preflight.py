"""The mount-time download sample kept in the listing store (pure logic; the remount through a
real mount is tests/test_mount_tree.py)."""
from __future__ import annotations

import json

from terrafs.cli.preflight import DownloadSample

HOSTS = frozenset({("https", "services.terrascope.be", 443)})
URL = "https://services.terrascope.be/download/a.tif"


def test_a_kept_sample_is_taken_back_as_it_was_kept():
    sample = DownloadSample(URL, frozenset({("http", "elsewhere.example", 80)}))
    value = json.loads(json.dumps(sample.kept()))  # as the listing store gives it back
    assert value == {"url": URL, "unlisted": [["http", "elsewhere.example", 80]]}
    assert DownloadSample.from_kept(value, HOSTS) == sample
    assert DownloadSample.from_kept({"url": None, "unlisted": []}, HOSTS) == DownloadSample(None, frozenset())


def test_a_kept_url_off_auth_hosts_or_a_malformed_entry_is_not_used():
    for value in ({"url": "https://evil.example/a.tif", "unlisted": []},
                  {"url": "http://services.terrascope.be/a.tif", "unlisted": []},
                  {"url": 3, "unlisted": []}, {"url": URL}, {"url": URL, "unlisted": [["https", "h"]]},
                  {"url": URL, "unlisted": [["https", "h", "443"]]}, [URL], None, "x"):
        assert DownloadSample.from_kept(value, HOSTS) is None, value
