"""Mount option lists as mount(8), fstab and `terrafs mount -o` give them (pure logic)."""
from __future__ import annotations

import os

import pytest

from terrafs.errors import TerrafsError
from terrafs.text import split_listen
from terrafs.mount.options import parse_options


def test_fstab_line_options_are_sorted_into_their_kinds():
    opts = parse_options("rw,_netdev,nofail,noauto,auto,user,users,defaults,x-systemd.automount,"
                         "x-systemd.requires=network-online.target,comment=x,config=/etc/terrafs/config.yaml,"
                         "layout=platform,allow_other,uid=1000,gid=100,umask=022,default_permissions,ro")
    assert opts.fuse == {"allow_other": True, "default_permissions": True}
    assert (opts.uid, opts.gid, opts.umask) == (1000, 100, 0o022)
    assert (opts.config, opts.layout) == ("/etc/terrafs/config.yaml", "platform")
    assert "_netdev" in opts.ignored and "x-systemd.automount" in opts.ignored and "rw" in opts.ignored


def test_umask_only_takes_bits_away_from_a_read_only_mount():
    own = parse_options("umask=027,uid=5,gid=6").ownership()
    assert (own.uid, own.gid, own.dir_mode, own.file_mode) == (5, 6, 0o550, 0o440)
    default = parse_options(None).ownership()
    assert (default.uid, default.gid, default.dir_mode, default.file_mode) == (os.getuid(), os.getgid(), 0o555, 0o444)


def test_user_and_group_names_are_looked_up():
    opts = parse_options("uid=root,gid=root")
    assert (opts.uid, opts.gid) == (0, 0)


@pytest.mark.parametrize("bad, message", [
    ("uid=nosuchuser", "no user named 'nosuchuser'"),
    ("gid=nosuchgroup", "no group named 'nosuchgroup'"),
    ("umask=999", "octal mask"),
    ("umask=", "needs a value"),
    ("uid", "needs a value"),
    ("layout=flat", "default or platform"),
])
def test_bad_options_are_one_clear_error(bad, message):
    with pytest.raises(TerrafsError, match=message):
        parse_options(bad)


def test_metrics_listen_addresses():
    assert split_listen("127.0.0.1:9567") == ("127.0.0.1", 9567)
    assert split_listen("[::1]:9567") == ("::1", 9567)
    for bad in ("9567", "host:", ":9567", "host:99999", "host:http"):
        with pytest.raises(ValueError):
            split_listen(bad)
