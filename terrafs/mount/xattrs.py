"""The names of the extended attributes a mount shows (no libfuse here: the CLI reads them too)."""

XATTR_PREFIX = "user.terrafs."
