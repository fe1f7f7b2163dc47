"""CQL2 filters (JSON and a small text subset) and the STAC `query` extension, evaluated on
an item's id, collection, bbox and properties.

It evaluates filters only: no searching, no documents, nothing from the client side of terrafs.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

from terrafs.emulator.common import bboxes_intersect, geometry_bbox, parse_bbox, parse_instant
from terrafs.emulator.stac.params import BadRequest

_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "eq": lambda a, b: a == b,
    "<>": lambda a, b: a != b, "!=": lambda a, b: a != b, "neq": lambda a, b: a != b,
    "<": lambda a, b: a < b, "lt": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, "lte": lambda a, b: a <= b,
    ">": lambda a, b: a > b, "gt": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "gte": lambda a, b: a >= b,
}


def _prop(item: dict, name: str) -> Any:
    name = name[len("properties."):] if name.startswith("properties.") else name
    if name in ("id", "collection"):
        return item[name]
    val = item["properties"].get(name)
    if name in ("datetime", "start_datetime", "end_datetime", "created", "updated") and isinstance(val, str):
        return parse_instant(val)
    return val


def _cql_value(arg: Any, item: dict) -> Any:
    if isinstance(arg, dict):
        if "property" in arg:
            return _prop(item, arg["property"])
        if "timestamp" in arg:
            return parse_instant(arg["timestamp"])
        if "date" in arg:
            return parse_instant(arg["date"])
        if "interval" in arg:
            return [None if v == ".." else parse_instant(v) for v in arg["interval"]]
        if "coordinates" in arg or "bbox" in arg:
            return geometry_bbox(arg["coordinates"]) if "coordinates" in arg else parse_bbox(arg["bbox"])
    if isinstance(arg, list):
        return [_cql_value(a, item) for a in arg]
    return arg


def cql2_eval(expr: Any, item: dict) -> bool:
    """Evaluate a CQL2-JSON expression (the basic subset plus like/in/between and bbox-level spatial ops)."""
    if isinstance(expr, bool):
        return expr
    if not isinstance(expr, dict) or "op" not in expr:
        raise BadRequest("Invalid CQL2 filter expression")
    op = str(expr["op"]).lower()
    args = expr.get("args", [])
    if op == "and":
        return all(cql2_eval(a, item) for a in args)
    if op == "or":
        return any(cql2_eval(a, item) for a in args)
    if op == "not":
        return not cql2_eval(args[0], item)
    vals = [_cql_value(a, item) for a in args]
    try:
        if op in _CMP:
            return vals[0] is not None and vals[1] is not None and _CMP[op](vals[0], vals[1])
        if op == "in":
            return vals[0] in vals[1]
        if op == "between":
            return vals[0] is not None and vals[1] <= vals[0] <= vals[2]
        if op == "like":
            pattern = "^" + re.escape(str(vals[1])).replace("%", ".*").replace("_", ".") + "$"
            return vals[0] is not None and re.match(pattern, str(vals[0])) is not None
        if op in ("isnull", "is null"):
            return vals[0] is None
        if op in ("s_intersects", "intersects"):
            return bboxes_intersect(tuple(item["bbox"]), vals[1])
        if op in ("t_intersects", "anyinteracts"):
            when = vals[0]
            lo, hi = (vals[1] if isinstance(vals[1], list) else [vals[1], vals[1]])
            return (lo is None or when >= lo) and (hi is None or when <= hi)
    except (TypeError, IndexError):
        raise BadRequest(f"Invalid arguments for CQL2 operator {op!r}") from None
    raise BadRequest(f"Unsupported CQL2 operator {op!r}")


_TEXT_CLAUSE = re.compile(
    r"^\s*\(?\s*([A-Za-z_][\w:.\-]*)\s*(<=|>=|<>|!=|=|<|>)\s*('(?:[^']*)'|[-+]?\d+(?:\.\d+)?)\s*\)?\s*$")


def cql2_text_to_json(text: str) -> dict:
    """The small CQL2-text subset: `prop OP value [AND prop OP value ...]`."""
    clauses = re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE)
    args = []
    for c in clauses:
        m = _TEXT_CLAUSE.match(c)
        if not m:
            raise BadRequest(f"Unsupported CQL2-text filter: {text!r}")
        name, op, raw = m.groups()
        value: Any = raw[1:-1] if raw.startswith("'") else float(raw)
        args.append({"op": op, "args": [{"property": name}, value]})
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


def query_ext_match(query: dict, item: dict) -> bool:
    """STAC `query` extension: {"eo:cloud_cover": {"lte": 10}, "grid:code": {"eq": "MGRS-31UFS"}}."""
    for name, ops in query.items():
        val = _prop(item, name)
        if not isinstance(ops, dict):
            ops = {"eq": ops}
        for op, arg in ops.items():
            op = op.lower()
            if op in _CMP:
                if val is None or not _CMP[op](val, arg):
                    return False
            elif op == "in":
                if val not in arg:
                    return False
            elif op == "startswith":
                if not str(val).startswith(str(arg)):
                    return False
            elif op == "endswith":
                if not str(val).endswith(str(arg)):
                    return False
            elif op == "contains":
                if str(arg) not in str(val):
                    return False
            else:
                raise BadRequest(f"Unsupported query operator {op!r}")
    return True


def filter_param(params: dict) -> Any:
    flt = params.get("filter")
    if flt in (None, ""):
        return None
    lang = str(params.get("filter-lang") or params.get("filter_lang") or "").lower()
    if isinstance(flt, dict):
        return flt
    text = str(flt).strip()
    if lang == "cql2-json" or (not lang and text.startswith("{")):
        try:
            return json.loads(text)
        except ValueError:
            raise BadRequest("Invalid CQL2-JSON filter") from None
    return cql2_text_to_json(text)
