"""The STAC API fields extension (item-search#fields) as stac-fastapi-pgstac answers it.

parse_fields() reads the request's `fields` (GET: "id,-geometry,+properties.datetime";
POST: {"include": [...], "exclude": [...]}) into a Fields value; apply() trims one
item with it. The semantics follow stac-fastapi-pgstac:
- GET entries: a "-" prefix excludes, a "+" prefix or none includes; dotted names
  reach into objects ("properties.datetime", "assets.B02.href").
- An include wins over an exclude of the same key or of one of its parents.
- With includes, the item keeps only those keys, plus "id" and "collection"
  (which pgstac always adds); with none, everything. Excludes are removed after.
- The item's links are put back afterwards unless "links" is excluded (the API
  adds links after pgstac has filtered the item).

This module only shapes JSON; it serves nothing and imports nothing from the
client side of terrafs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONFORMANCE_CLASS = "https://api.stacspec.org/v1.0.0/item-search#fields"
ALWAYS_INCLUDED = ("id", "collection")
_MAX_FIELDS = 200  # more names than any sane request carries
_MAX_NAME = 200


class FieldsError(ValueError):
    """A `fields` value that cannot be read (the caller answers 400)."""


@dataclass(frozen=True)
class Fields:
    include: frozenset[str]
    exclude: frozenset[str]

    @property
    def empty(self) -> bool:
        return not self.include and not self.exclude

    def keeps(self, key: str) -> bool:
        """Whether anything of the top-level `key` survives (so a server may skip building it)."""
        if key in self.exclude:
            return False
        return not self.include or any(i == key or i.startswith(key + ".") for i in self.include)


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise FieldsError("fields entries must be strings")
    name = value.strip()
    if not name or len(name) > _MAX_NAME or any(not part for part in name.split(".")):
        raise FieldsError(f"Invalid field name: {value[:80]!r}")
    return name


def parse_fields(value: Any) -> Fields | None:
    """The Fields of a request's `fields` value (GET string or POST object); None when absent."""
    if value is None or value == "" or value == {}:
        return None
    include: set[str] = set()
    exclude: set[str] = set()
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if len(parts) > _MAX_FIELDS:
            raise FieldsError("too many fields")
        for part in parts:
            if part[0] == "-":
                exclude.add(_name(part[1:]))
            elif part[0] == "+":
                include.add(_name(part[1:]))
            else:
                include.add(_name(part))
    elif isinstance(value, dict):
        unknown = set(value) - {"include", "exclude"}
        if unknown:
            raise FieldsError(f"Unknown fields member(s): {', '.join(sorted(map(str, unknown)))}")
        for key, into in (("include", include), ("exclude", exclude)):
            names = value.get(key) or []
            if not isinstance(names, list) or len(names) > _MAX_FIELDS:
                raise FieldsError(f"fields.{key} must be a list of names")
            into.update(_name(n) for n in names)
    else:
        raise FieldsError("fields must be a comma list (GET) or an object with include/exclude (POST)")
    return Fields(frozenset(include), frozenset(_clean_exclude(include, exclude)))


def _clean_exclude(include: set[str], exclude: set[str]) -> set[str]:
    """Drop excludes that an include names, or that are a parent of an included key."""
    return {e for e in exclude if e not in include and not any(i.startswith(e + ".") for i in include)}


def _merge(into: dict, more: dict) -> None:
    for key, value in more.items():
        if isinstance(into.get(key), dict) and isinstance(value, dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _included(source: dict, names: set[str] | frozenset[str]) -> dict:
    out: dict[str, Any] = {}
    for name in names:
        root, _, rest = name.partition(".")
        if root not in source:
            continue
        value = source[root]
        if rest and isinstance(value, dict):
            part = _included(value, {rest})
            if isinstance(out.get(root), dict):
                _merge(out[root], part)
            else:
                out[root] = part
        else:
            out[root] = value
    return out


def _exclude(target: dict, names: frozenset[str] | set[str]) -> None:
    for name in names:
        root, _, rest = name.partition(".")
        if root not in target:
            continue
        if rest and isinstance(target[root], dict):
            _exclude(target[root], {rest})
            if not target[root]:
                del target[root]
        elif not rest:
            del target[root]


def apply(item: dict, fields: Fields | None) -> dict:
    """`item` trimmed by `fields`. The item's own dicts are reused and changed:
    pass one built for this answer."""
    if fields is None or fields.empty:
        return item
    out = _included(item, set(fields.include) | set(ALWAYS_INCLUDED)) if fields.include else item
    links = item.get("links")
    _exclude(out, fields.exclude)
    if "links" not in fields.exclude and links is not None:
        out["links"] = links
    return out
