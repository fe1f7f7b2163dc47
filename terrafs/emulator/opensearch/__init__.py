"""The emulator's OpenSearch catalogue, shaped like services.terrascope.be/catalogue.

search.handle_opensearch() answers /collections, /products and /description (each also with
.geojson): 1-based startIndex + count paging with first/previous/next/last links, the 100 000-result
pagination cap, count=0 (totals only), interval syntax for cloudCover and dates, accessedFrom=MEP
(file:// hrefs), and an OpenSearch exception body for unknown or invalid parameters. The modules:
query (parameters and product filters), documents (features, envelope, description), paging
(page parameters and links) and search (the endpoints); they import downward in that order, and
terrafs.emulator.common for what STAC shares.

Nothing here serves downloads or checks authentication, or imports anything from the client side
of terrafs. This file imports nothing.
"""
