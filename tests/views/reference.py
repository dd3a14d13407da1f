"""The reference evaluator for differential tests: the ViewDefinition algorithm written out plainly in Python,
with fhirpathpy (a test-only dependency) evaluating each FHIRPath. Slow and obvious on purpose.

Paths are evaluated against the resource with the FHIR R4 model when the focus is the resource itself
(so choice types resolve), and model-free against a nested item (forEach), which is how the views of
the differential tests use them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import fhirpathpy
from fhirpathpy.models import models

from airflow_provider_smart.views import load_view


def evaluate(view_source: Mapping[str, Any], resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    view = load_view(view_source)
    env = {name: c.value for name, c in view.constants.items()}
    source = view.source
    rows: list[dict[str, Any]] = []
    for resource in resources:
        if resource.get("resourceType") != view.resource:
            continue
        keep = True
        for item in source.get("where", []):
            result = _fp(resource, resource, item["path"], env, 0)
            if not (result and result[0] is True):
                keep = False
        if not keep:
            continue
        rows.extend(_select({"select": source["select"]}, resource, resource, env, 0))
    return rows


def _fp(focus: Any, resource: Any, path: str, env: dict[str, Any], index: int) -> list[Any]:
    variables = {**env, "rowIndex": index}
    if path == "$this":  # fhirpathpy has no $this outside a function's argument
        return [focus]
    if focus is resource:
        return list(fhirpathpy.evaluate(focus, path, variables, models["r4"]))
    return list(fhirpathpy.evaluate(focus, path, variables))


def _columns(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out = list(node.get("column", []))
    for child in node.get("select", []):
        out += _columns(child)
    if node.get("unionAll"):
        out += _columns(node["unionAll"][0])
    return out


def _select(
    node: Mapping[str, Any], focus: Any, resource: Any, env: dict[str, Any], index: int
) -> list[dict[str, Any]]:
    key = "forEach" if "forEach" in node else "forEachOrNull" if "forEachOrNull" in node else None
    if key is None:
        return _body(node, focus, resource, env, index)
    items = _fp(focus, resource, node[key], env, index)
    if not items and key == "forEachOrNull":
        return [dict.fromkeys((c["name"] for c in _columns(node)), None)]
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        rows += _body(node, item, resource, env, i)
    return rows


def _body(node: Mapping[str, Any], focus: Any, resource: Any, env: dict[str, Any], index: int) -> list[dict[str, Any]]:
    base: dict[str, Any] = {}
    for column in node.get("column", []):
        values = _fp(focus, resource, column["path"], env, index)
        if column.get("collection"):
            base[column["name"]] = [_typed(v, column.get("type")) for v in values]
        else:
            assert len(values) <= 1, f"{column['name']}: several values {values}"
            base[column["name"]] = _typed(values[0], column.get("type")) if values else None
    parts = [[base]]
    parts += [_select(child, focus, resource, env, index) for child in node.get("select", [])]
    if node.get("unionAll"):
        parts.append([row for branch in node["unionAll"] for row in _select(branch, focus, resource, env, index)])
    rows = [{}]
    for part in parts:
        rows = [{**a, **b} for a in rows for b in part]
    return rows


def _typed(value: Any, ctype: str | None) -> Any:
    """The engine's typing rules (types.py), written independently."""
    if ctype == "boolean":
        return value if isinstance(value, bool) else None
    if ctype in ("integer", "integer64", "positiveInt", "unsignedInt"):
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if ctype == "decimal":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            return None
        try:
            return Decimal(str(value)).quantize(Decimal("0.000000001"))
        except InvalidOperation:
            return None
    if ctype == "date":
        if not isinstance(value, str):
            return None
        text = value[:10]
        text += "-01-01"[len(text) - 4 :] if len(text) < 10 else ""
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            return None
    if ctype in ("dateTime", "instant"):
        if not isinstance(value, str):
            return None
        text = value if len(value) >= 10 else value + "-01-01"[len(value) - 4 :]
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return None if value is None else str(value)
