"""Load and validate a SQL on FHIR v2 ViewDefinition into an immutable tree.

Everything the spec says must be rejected is rejected here, before any data is read, with a
:class:`~airflow_provider_smart.exceptions.ViewDefinitionError` naming the JSON path at fault. Two rules
need the data and are checked when the view runs: a column without ``collection: true`` that meets
several values, and a ``where`` path that gives a non-boolean.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ViewDefinitionError
from . import fhirpath
from .fhirpath import Node

# Declared column types: FHIR primitive types and what each becomes in Arrow/Parquet (see types.py).
COLUMN_TYPES = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant",
        "integer", "integer64", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri",
        "url", "uuid", "xhtml",
    }
)  # fmt: skip
_CONSTANT_TYPES = frozenset(COLUMN_TYPES - {"markdown", "xhtml"})
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESOURCE = re.compile(r"^[A-Z][A-Za-z]+$")
_SELECT_KEYS = frozenset({"column", "select", "forEach", "forEachOrNull", "unionAll", "repeat", "id", "extension"})
_COLUMN_KEYS = frozenset({"name", "path", "description", "collection", "type", "tag", "id", "extension"})
# Variables every view has, besides its constants.
BUILTIN_VARIABLES = frozenset({"rowIndex", "resource", "rootResource", "context"})


@dataclass(frozen=True)
class ViewColumn:
    """One output column: its ``name``, declared FHIR ``type`` (None when undeclared), and ``collection``."""

    name: str
    type: str | None
    collection: bool
    path: str = field(compare=False)
    expr: Node = field(compare=False, repr=False)
    location: str = field(compare=False, repr=False)


@dataclass(frozen=True)
class SelectNode:
    """A ``select`` entry (the view itself is the root one, with no iteration)."""

    location: str
    columns: tuple[ViewColumn, ...] = ()
    selects: tuple[SelectNode, ...] = ()
    union_all: tuple[SelectNode, ...] = ()
    iterate: Node | None = None  # forEach / forEachOrNull expression
    or_null: bool = False  # forEachOrNull
    repeat: tuple[Node, ...] = ()

    @property
    def output_columns(self) -> tuple[ViewColumn, ...]:
        """Own columns, then nested selects', then the first unionAll branch's: the spec's column order."""
        out = list(self.columns)
        for child in self.selects:
            out.extend(child.output_columns)
        if self.union_all:
            out.extend(self.union_all[0].output_columns)
        return tuple(out)


@dataclass(frozen=True)
class Constant:
    name: str
    type: str
    value: str | int | float | bool


@dataclass(frozen=True)
class ViewDefinition:
    """A validated ViewDefinition. ``columns`` lists the output columns in order."""

    name: str
    resource: str
    root: SelectNode
    where: tuple[tuple[Node, str], ...] = ()
    constants: Mapping[str, Constant] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def columns(self) -> tuple[ViewColumn, ...]:
        return self.root.output_columns


def load_view(source: ViewDefinition | Mapping[str, Any] | str | Path) -> ViewDefinition:
    """Validate a ViewDefinition given as a dict, a JSON text, or a path to a ``.json`` file.

    Raises :class:`ViewDefinitionError` whose ``path`` names the part at fault.
    """
    if isinstance(source, ViewDefinition):
        return source
    data: Any = source
    origin = "$"
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        path = Path(source)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ViewDefinitionError(f"cannot read the view file {path}: {exc}", path="$", file=str(path)) from None
        data = _parse_json(text, origin)
    elif isinstance(source, str):
        data = _parse_json(source, origin)
    return _Loader().view(data)


def _parse_json(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ViewDefinitionError(f"{origin}: not valid JSON: {exc}", path="$") from None


def _fail(where: str, message: str) -> ViewDefinitionError:
    return ViewDefinitionError(f"{where}: {message}", path=where)


class _Loader:
    def __init__(self) -> None:
        self.constants: dict[str, Constant] = {}

    def view(self, data: Any) -> ViewDefinition:
        if not isinstance(data, Mapping):
            raise _fail("$", f"a ViewDefinition is a JSON object, got {type(data).__name__}")
        kind = data.get("resourceType", "ViewDefinition")
        if kind != "ViewDefinition":
            raise _fail("resourceType", f"expected 'ViewDefinition', got {kind!r}")
        resource = data.get("resource")
        if not isinstance(resource, str) or not _RESOURCE.match(resource):
            raise _fail("resource", f"a FHIR resource type such as 'Patient' is required, got {resource!r}")
        name = data.get("name", resource.lower())
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail("name", f"must match {_NAME.pattern} (a table name), got {name!r}")
        self.constants = self.load_constants(data.get("constant", []))
        selects = data.get("select")
        if not isinstance(selects, list) or not selects:
            raise _fail("select", "at least one select is required")
        root = SelectNode(location="$", selects=tuple(self.select(s, f"select[{i}]") for i, s in enumerate(selects)))
        where = data.get("where", [])
        if not isinstance(where, list):
            raise _fail("where", "must be a list of {path} objects")
        filters = []
        for i, item in enumerate(where):
            loc = f"where[{i}].path"
            if not isinstance(item, Mapping) or "path" not in item:
                raise _fail(f"where[{i}]", "each where entry needs a 'path'")
            filters.append((self.expression(item["path"], loc), loc))
        self.check_names(root)
        return ViewDefinition(
            name=name, resource=resource, root=root, where=tuple(filters), constants=self.constants, source=data
        )

    def load_constants(self, raw: Any) -> dict[str, Constant]:
        if not isinstance(raw, list):
            raise _fail("constant", "must be a list")
        out: dict[str, Constant] = {}
        for i, item in enumerate(raw):
            loc = f"constant[{i}]"
            if not isinstance(item, Mapping):
                raise _fail(loc, "each constant is an object with a name and one value[x]")
            name = item.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise _fail(f"{loc}.name", f"must match {_NAME.pattern}, got {name!r}")
            if name in out or name in BUILTIN_VARIABLES:
                raise _fail(f"{loc}.name", f"constant {name!r} is defined twice or shadows a built-in variable")
            values = [k for k in item if k.startswith("value")]
            if len(values) != 1:
                raise _fail(loc, f"constant {name!r} needs exactly one value[x] (valueString, valueInteger...)")
            key = values[0]
            ctype = key[5:6].lower() + key[6:]
            if ctype not in _CONSTANT_TYPES:
                raise _fail(f"{loc}.{key}", f"unsupported constant type {key}")
            value = item[key]
            if not _constant_ok(ctype, value):
                raise _fail(f"{loc}.{key}", f"{value!r} is not a valid {ctype}")
            out[name] = Constant(name, ctype, value)
        return out

    def expression(self, source: Any, where: str) -> Node:
        node = fhirpath.parse(source, where)
        for sub in fhirpath.walk(node):
            if isinstance(sub, fhirpath.Var) and sub.name not in self.constants and sub.name not in BUILTIN_VARIABLES:
                raise _fail(where, f"%{sub.name} is neither a constant of this view nor a built-in variable")
        return node

    def select(self, data: Any, where: str) -> SelectNode:
        if not isinstance(data, Mapping):
            raise _fail(where, "a select is a JSON object")
        unknown = sorted(set(data) - _SELECT_KEYS)
        if unknown:
            raise _fail(f"{where}.{unknown[0]}", f"unknown select key {unknown[0]!r}")
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in data]
        if len(iterators) > 1:
            raise _fail(where, f"only one of forEach, forEachOrNull, repeat may be given, got {iterators}")
        iterate = None
        repeat: tuple[Node, ...] = ()
        if "forEach" in data or "forEachOrNull" in data:
            key = "forEach" if "forEach" in data else "forEachOrNull"
            iterate = self.expression(data[key], f"{where}.{key}")
        if "repeat" in data:
            paths = data["repeat"]
            if not isinstance(paths, list) or not paths:
                raise _fail(f"{where}.repeat", "repeat is a non-empty list of FHIRPath strings")
            repeat = tuple(self.expression(p, f"{where}.repeat[{i}]") for i, p in enumerate(paths))
        columns = tuple(
            self.column(c, f"{where}.column[{i}]") for i, c in enumerate(self.list_of(data, "column", where))
        )
        selects = tuple(
            self.select(s, f"{where}.select[{i}]") for i, s in enumerate(self.list_of(data, "select", where))
        )
        unions = tuple(
            self.select(s, f"{where}.unionAll[{i}]") for i, s in enumerate(self.list_of(data, "unionAll", where))
        )
        if not (columns or selects or unions):
            raise _fail(where, "a select needs at least one of column, select, unionAll")
        node = SelectNode(
            location=where,
            columns=columns,
            selects=selects,
            union_all=unions,
            iterate=iterate,
            or_null="forEachOrNull" in data,
            repeat=repeat,
        )
        self.check_union(node)
        return node

    @staticmethod
    def list_of(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
        value = data.get(key, [])
        if not isinstance(value, list):
            raise _fail(f"{where}.{key}", f"{key} must be a list")
        return value

    def column(self, data: Any, where: str) -> ViewColumn:
        if not isinstance(data, Mapping):
            raise _fail(where, "a column is a JSON object with name and path")
        unknown = sorted(set(data) - _COLUMN_KEYS)
        if unknown:
            raise _fail(f"{where}.{unknown[0]}", f"unknown column key {unknown[0]!r}")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise _fail(f"{where}.name", f"a column name must match {_NAME.pattern}, got {name!r}")
        if "path" not in data:
            raise _fail(f"{where}.path", f"column {name!r} has no path")
        ctype = data.get("type")
        if ctype is not None and ctype not in COLUMN_TYPES:
            raise _fail(
                f"{where}.type",
                f"column {name!r}: type {ctype!r} is not a FHIR primitive type ({', '.join(sorted(COLUMN_TYPES))})",
            )
        collection = data.get("collection", False)
        if not isinstance(collection, bool):
            raise _fail(f"{where}.collection", f"collection must be true or false, got {collection!r}")
        expr = self.expression(data["path"], f"{where}.path")
        return ViewColumn(name, ctype, collection, data["path"], expr, f"{where}.path")

    @staticmethod
    def check_union(node: SelectNode) -> None:
        if not node.union_all:
            return
        first = [(c.name, c.type, c.collection) for c in node.union_all[0].output_columns]
        for i, branch in enumerate(node.union_all[1:], start=1):
            cols = [(c.name, c.type, c.collection) for c in branch.output_columns]
            if [c[0] for c in cols] != [c[0] for c in first]:
                raise _fail(
                    f"{branch.location}",
                    f"unionAll branches must give the same columns in the same order: branch 0 gives "
                    f"{[c[0] for c in first]}, branch {i} gives {[c[0] for c in cols]}",
                )
            if cols != first:
                raise _fail(
                    f"{branch.location}", f"unionAll branch {i} declares other types than branch 0: {cols} vs {first}"
                )

    @staticmethod
    def check_names(root: SelectNode) -> None:
        seen: dict[str, str] = {}
        for column in root.output_columns:
            if column.name in seen:
                raise _fail(column.location, f"column name {column.name!r} is used twice (also at {seen[column.name]})")
            seen[column.name] = column.location


def _constant_ok(ctype: str, value: Any) -> bool:
    if ctype == "boolean":
        return isinstance(value, bool)
    if ctype in ("integer", "integer64", "positiveInt", "unsignedInt"):
        return isinstance(value, int) and not isinstance(value, bool)
    if ctype == "decimal":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, str)
