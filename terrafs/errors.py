"""The exceptions terrafs raises at its edges.

mount/fuseops.py turns them into an errno, cli/main.py into one clear line. Messages never
carry secrets (passwords, tokens, Authorization headers).
"""


class TerrafsError(Exception):
    """Base class of every error terrafs raises on purpose."""


class ConfigError(TerrafsError):
    """The configuration (file, environment, arguments) is not valid."""


class CatalogueError(TerrafsError):
    """The catalogue failed, or answered something we cannot use."""


class FetchError(TerrafsError):
    """Bytes of a file could not be fetched correctly."""


class SizeChanged(FetchError):
    """The download server gives a file another size than the one it was opened with
    (republished at another size): this read fails, the next open has the new size."""

    def __init__(self, url: str, size: int, expected: int):
        super().__init__(f"{url} is now {size} bytes on the server, it was opened as {expected}; open it again")
        self.url, self.size, self.expected = url, size, expected


class AuthError(TerrafsError):
    """Credentials are missing or were refused."""
