"""Pins the two mfusepy internals that terrafs/mount/fuseops.py overrides.

fs.FUSE replaces mfusepy's `read` callback (to fill libfuse's buffer in place)
and wraps its `_wrapper` (every callback goes through it). If a new mfusepy
renames either or changes the read callback's arguments, these tests fail
before a mount silently falls back to (or breaks) the stock paths.
"""
from __future__ import annotations

import inspect

import mfusepy

from terrafs.mount import fuseops as fs


def test_mfusepy_still_has_the_callbacks_fs_overrides():
    assert callable(getattr(mfusepy.FUSE, "_wrapper", None)), "mfusepy.FUSE._wrapper is gone"
    assert callable(getattr(mfusepy.FUSE, "read", None)), "mfusepy.FUSE.read is gone"


def test_the_read_callback_keeps_its_arguments():
    theirs = list(inspect.signature(mfusepy.FUSE.read).parameters)
    ours = list(inspect.signature(fs.FUSE.read).parameters)
    assert theirs == ours == ["self", "path", "buf", "size", "offset", "fip"], theirs


def test_wrapper_keeps_its_arguments():
    params = inspect.signature(mfusepy.FUSE._wrapper).parameters
    kinds = [p.kind for p in params.values()]
    assert list(params)[:2] == ["self", "func"], list(params)
    assert inspect.Parameter.VAR_POSITIONAL in kinds and inspect.Parameter.VAR_KEYWORD in kinds


def test_mfusepy_installs_read_through_the_class_attribute():
    """mfusepy wires each libfuse callback to the method of the same name on its FUSE object."""
    src = inspect.getsource(mfusepy.FUSE.__init__)
    assert "_wrapper" in src and "getattr(self" in src, "mfusepy no longer wires callbacks by name"
