"""The exceptions terrafs raises at its edges.

fs.py turns them into an errno, cli.py into one clear line. Messages never
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


class AuthError(TerrafsError):
    """Credentials are missing or were refused."""
