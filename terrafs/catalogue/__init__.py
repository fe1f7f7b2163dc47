"""The catalogue interface: what tree asks of a catalogue, whatever the service.

Two implementations: stac.StacCatalogue (the default) and
opensearch.OpenSearchCatalogue. Both follow every page and return the model
values of catalogue/model.py; they raise CatalogueError on failure or garbage.
"""
from __future__ import annotations

from datetime import datetime
from typing import Protocol

from terrafs.catalogue.model import Collection, Filter, Product, ProductFile

__all__ = ["Catalogue", "Collection", "Filter", "Product", "ProductFile"]


class Catalogue(Protocol):
    def collections(self) -> list[Collection]:
        """All collections the service lists (every page)."""

    def products(
        self,
        collection: Collection,
        start: datetime | None,
        end: datetime | None,
        flt: Filter | None = None,
        limit: int | None = None,
    ) -> list[Product]:
        """Products acquired in [start, end] (inclusive, UTC), every page
        followed with the largest page size the service allows; at most
        `limit` when given (one small request: used to learn a collection's
        platform path prefix)."""

    @property
    def requests_made(self) -> int:
        """How many HTTP requests this catalogue has sent (for tests and logs)."""
