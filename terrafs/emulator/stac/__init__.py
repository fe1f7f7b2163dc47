"""The emulator's STAC API, shaped like terra-stac-api (SFEOS) at stac.terrascope.be.

search.handle_stac() answers one request below /stac: landing page, conformance, collections,
items (current and older item form), GET and POST /search with token paging, datetime/bbox/ids,
`query`, CQL2 `filter` and the fields extension (terrafs/emulator/fields.py). The modules:
params (search parameters), cql2 (CQL2 filters and the query extension), documents (the JSON
documents), paging (tokens and next links) and search (searching and routing); they import
downward in that order, and terrafs.emulator.common for what OpenSearch shares.

Nothing here serves downloads or tokens, checks authentication, or imports anything from the
client side of terrafs. This file imports nothing.
"""
