"""Compile a validated ViewDefinition to one DuckDB SELECT over NDJSON files.

How values are represented. DuckDB's ``read_json`` reads each resource once and hands over only the
top-level fields the view touches, each as a ``JSON`` column (``code``, ``subject``...). A FHIRPath
collection is a ``JSON[]`` list; navigation flattens (a field holding an array contributes its items).
Results that are known to be single values skip the list: a compiled value has a ``kind``:

- ``coll``: ``JSON[]``; ``json``: one ``JSON`` value or NULL (empty);
- ``raw``: a field's JSON as stored, where an array stands for its items (the fast path: a chain of fields,
  ``first()`` and ``[n]`` is one ``json_extract`` JSONPath, falling back to the general form only when that
  finds nothing, e.g. because an array sits in the middle of the chain);
- ``bool`` / ``str`` / ``num``: a SQL BOOLEAN / VARCHAR / DOUBLE, NULL meaning empty.

Rows. A select without iteration gives one row per focus; ``forEach`` / ``forEachOrNull`` / ``repeat`` and
``unionAll`` give a list of row structs built with ``list_transform``; the top level unnests it. A view
that has neither stays a plain projection, as fast as hand-written SQL.

A value used twice is bound once (``let``) rather than written twice, so the SQL grows linearly with
the view.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..exceptions import ViewDefinitionError
from . import fhirpath as fp
from .definition import Constant, SelectNode, ViewColumn, ViewDefinition
from .types import DATETIME_TYPES, INTEGER_TYPES, duckdb_type

NUMERIC = "('BIGINT','UBIGINT','DOUBLE')"
EMPTY = "[]::JSON[]"
REPEAT_DEPTH = 12  # repeat is unrolled: items nested deeper than this are not reached
_SIMPLE = re.compile(r'^(?:[A-Za-z_][A-Za-z0-9_]*|"[A-Za-z0-9_]+"|[A-Za-z_][A-Za-z0-9_]*\."[A-Za-z0-9_]+")$')
_EXTRACT = re.compile(r"^json_extract\(((?:[A-Za-z_][A-Za-z0-9_]*|\"[A-Za-z0-9_]+\")), '([^']*)'\)$")
# Recomputing one json_extract of a column costs less than binding it through a one-item list.
_CHEAP = re.compile(r"^json_extract\((?:[A-Za-z_][A-Za-z0-9_]*|\"[A-Za-z0-9_]+\"), '[^']*'\)$")
_PRIMITIVE_JSON_TYPES = {
    "boolean": "('BOOLEAN')",
    "integer": "('BIGINT','UBIGINT')",
    "integer64": "('BIGINT','UBIGINT','VARCHAR')",
    "positiveInt": "('BIGINT','UBIGINT')",
    "unsignedInt": "('BIGINT','UBIGINT')",
    "decimal": "('BIGINT','UBIGINT','DOUBLE')",
}
_STRING_TYPES = frozenset(
    {"string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown", "base64Binary", "date",
     "dateTime", "instant", "time", "xhtml"}
)  # fmt: skip
# A relative reference, optionally versioned: group 1 is the key "<type>/<id>".
_REFERENCE = r"^([A-Za-z]+/[A-Za-z0-9.\-]{1,64})(/_history/[A-Za-z0-9.\-]{1,64})?$"


def q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def json_key(name: str) -> str:
    """A JSONPath step for a key, quoted so any key works."""
    return '."' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Value:
    sql: str
    kind: str  # coll | json | raw | bool | str | num
    hint: str | None = None  # FHIR type when known (ofType, a choice key, a literal)
    is_root: bool = False  # the resource itself: navigate to its columns rather than materialise it
    fast: str | None = None  # raw only: the bare json_extract, right whenever it gives a non-array value


@dataclass(frozen=True)
class Focus:
    """What a path's first step applies to: the resource (``var`` None) or one JSON item in a lambda."""

    var: str | None = None
    index: str | None = None  # SQL of $index (0-based) when iterating


class Compiler:
    def __init__(self, view: ViewDefinition) -> None:
        self.view = view
        self.constants: dict[str, Constant] = dict(view.constants)
        self.root_keys: dict[str, None] = {}  # ordered set of the top-level fields read
        self.whole_resource = False
        self.counter = 0
        self.location = "$"
        self.fast_enabled = True

    # -- helpers -------------------------------------------------------------------------------------

    def fresh(self, prefix: str = "v") -> str:
        self.counter += 1
        return f"_{prefix}{self.counter}"

    def let(self, sql: str, body: Callable[[str], str]) -> str:
        """``body(x)`` with ``x`` bound to ``sql`` once (inlined when ``sql`` is a plain name)."""
        if _SIMPLE.match(sql) or _CHEAP.match(sql):
            return body(sql)
        var = self.fresh("l")
        return f"(list_transform([{sql}], lambda {var}: {body(var)}))[1]"

    def error(self, message: str) -> ViewDefinitionError:
        return ViewDefinitionError(f"{self.location}: {message}", path=self.location)

    def root_column(self, key: str) -> str:
        self.root_keys[key] = None
        return ident(key)

    # -- conversions between kinds ------------------------------------------------------------------

    def coll(self, v: Value) -> str:
        if v.is_root:
            return f"[{self.whole()}]"
        if v.kind == "coll":
            return v.sql
        if v.kind == "raw":
            general = self.let(v.sql, self.items_of)
            parts = _EXTRACT.match(v.fast or v.sql)
            if parts:  # an array where the JSONPath ends: its items, without binding the value first
                base, path = parts.groups()
                return (
                    f"(CASE WHEN json_type({base}, '{path}') = 'ARRAY' THEN json_extract({base}, '{path}[*]') "
                    f"ELSE {general} END)"
                )
            return general
        if v.kind == "json":
            return f"list_filter([{v.sql}], lambda _x: _x IS NOT NULL)"
        return f"list_filter([to_json({v.sql})], lambda _x: _x IS NOT NULL)"

    def single(self, v: Value) -> str:
        """One JSON value or NULL (the first item; FHIRPath's singleton evaluation)."""
        if v.is_root:
            return self.whole()
        if v.kind == "coll":
            return f"({v.sql})[1]"
        if v.kind == "raw":
            first = self.let(v.sql, lambda x: f"(CASE WHEN json_type({x}) = 'ARRAY' THEN {x} -> '$[0]' ELSE {x} END)")
            if v.fast:
                return f"(CASE WHEN json_type({v.fast}) NOT IN ('ARRAY', 'NULL') THEN {v.fast} ELSE {first} END)"
            return first
        if v.kind == "json":
            return v.sql
        return f"to_json({v.sql})"

    def boolean(self, v: Value, strict_where: str | None = None) -> str:
        """A SQL BOOLEAN (NULL = empty). A single non-boolean item is true, as FHIRPath says; with
        ``strict_where`` it is a run error instead (a view's ``where`` must give a boolean)."""
        if v.kind == "bool":
            return v.sql
        if v.is_root:
            return "true"
        if v.kind in ("str", "num"):
            return f"({v.sql} IS NOT NULL OR NULL)" if strict_where is None else self.not_boolean(strict_where)
        item = self.single(v)

        def check(x: str) -> str:
            other = "true" if strict_where is None else self.not_boolean(strict_where)
            return (
                f"(CASE WHEN {x} IS NULL THEN NULL WHEN json_type({x}) = 'BOOLEAN' THEN {x}::BOOLEAN ELSE {other} END)"
            )

        return self.let(item, check)

    def not_boolean(self, where: str) -> str:
        return f"error({q(f'view {self.view.name}: {where} gave a value that is not a boolean')})"

    def text(self, v: Value) -> str:
        """A VARCHAR: a string's text, another item's JSON; NULL when empty."""
        if v.kind == "str":
            return v.sql
        if v.kind in ("num", "bool"):
            return f"CAST({v.sql} AS VARCHAR)"
        return f"(({self.single(v)}) ->> '$')"

    def number(self, v: Value) -> str:
        if v.kind == "num":
            return v.sql
        if v.kind == "bool":
            return "NULL::DOUBLE"
        if v.kind == "str":
            return f"TRY_CAST({v.sql} AS DOUBLE)"
        return self.let(
            self.single(v), lambda x: f"(CASE WHEN json_type({x}) IN {NUMERIC} THEN {x}::DOUBLE ELSE NULL END)"
        )

    def whole(self) -> str:
        """The resource as one JSON value (rarely needed: ``$this`` at the top, ``where()`` on it...)."""
        self.whole_resource = True
        return ident("__resource")

    # -- expressions ----------------------------------------------------------------------------------

    def expr(self, node: fp.Node, focus: Focus, row_index: str) -> Value:
        if isinstance(node, fp.Literal):
            return self.literal(node)
        if isinstance(node, fp.This):
            if node.name == "$index":
                return Value(focus.index or "0", "num")
            if node.name == "$total":
                raise self.error("$total is not supported")
            return self.focus_value(focus)
        if isinstance(node, fp.Var):
            return self.variable(node.name, row_index)
        fast = self.fast_path(node, focus, row_index) if self.fast_enabled else None
        if fast is not None:
            return fast
        return self.general(node, focus, row_index)

    def fast_path(self, node: fp.Node, focus: Focus, row_index: str) -> Value | None:
        """A chain of fields / first() / [n] from the focus as one JSONPath (see the module docstring)."""
        steps: list[str] = []
        current: fp.Node | None = node
        last_member = None
        while True:
            if isinstance(current, fp.Member):
                steps.append(json_key(current.name))
                last_member = last_member or current.name
                current = current.base
            elif isinstance(current, fp.Call) and current.name == "first" and current.base is not None:
                steps.append("[0]")
                current = current.base
            elif (
                isinstance(current, fp.Index)
                and isinstance(current.index, fp.Literal)
                and current.index.kind == "integer"
                and isinstance(current.index.value, int)
                and current.index.value >= 0
            ):
                steps.append(f"[{current.index.value}]")
                current = current.base
            else:
                break
        if not (current is None or current == fp.This()) or not steps or not steps[-1].startswith("."):
            return None
        steps.reverse()
        hint = _choice_hint(last_member or "")
        if focus.var is None:
            first = node_first_key(node)
            base, rest = self.root_column(first), steps[1:]
        else:
            base, rest = focus.var, steps
        if not rest:
            return Value(base, "raw", hint)
        extract = f"json_extract({base}, {q('$' + ''.join(rest))})"
        if focus.var is not None and len(rest) == 1 and rest[0].startswith("."):
            return Value(extract, "raw", hint)  # an item is never an array: one step is exact
        self.fast_enabled = False
        try:
            general = self.coll(self.general(node, focus, row_index))
        finally:
            self.fast_enabled = True
        return Value(f"coalesce({extract}, nullif(to_json({general}), '[]'::JSON))", "raw", hint, fast=extract)

    def general(self, node: fp.Node, focus: Focus, row_index: str) -> Value:
        if isinstance(node, fp.Member):
            base = self.focus_value(focus) if node.base is None else self.expr(node.base, focus, row_index)
            return self.member(base, node.name)
        if isinstance(node, fp.Index):
            base = self.expr(node.base, focus, row_index)
            index = self.expr(node.index, focus, row_index)
            if base.is_root:
                return Value(f"(CASE WHEN {self.number(index)} = 0 THEN {self.whole()} END)", "json")
            return Value(f"({self.coll(base)})[({self.number(index)})::BIGINT + 1]", "json")
        if isinstance(node, fp.Call):
            return self.call(node, focus, row_index)
        if isinstance(node, fp.Binary):
            return self.binary(node, focus, row_index)
        if isinstance(node, fp.Unary):
            operand = self.expr(node.operand, focus, row_index)
            return Value(f"(-{self.number(operand)})" if node.op == "-" else self.number(operand), "num")
        raise self.error(f"cannot compile {node!r}")  # pragma: no cover

    def focus_value(self, focus: Focus) -> Value:
        if focus.var is None:
            return Value("", "json", is_root=True)
        return Value(focus.var, "json")

    def literal(self, node: fp.Literal) -> Value:
        if node.kind == "empty":
            return Value(EMPTY, "coll")
        if node.kind == "boolean":
            return Value("true" if node.value else "false", "bool")
        if node.kind in ("integer", "decimal"):
            return Value(f"({node.text}::DOUBLE)", "num", node.kind)
        assert isinstance(node.value, str)
        return Value(q(node.value), "str", node.kind)

    def variable(self, name: str, row_index: str) -> Value:
        if name == "rowIndex":
            return Value(row_index, "num", "integer")
        if name in ("resource", "rootResource", "context"):
            return Value("", "json", is_root=True)
        constant = self.constants[name]  # load_view checked it exists
        value = constant.value
        if isinstance(value, bool):
            return Value("true" if value else "false", "bool", constant.type)
        if isinstance(value, int | float):
            return Value(f"({json.dumps(value)}::DOUBLE)", "num", constant.type)
        return Value(q(value), "str", constant.type)

    def member(self, base: Value, name: str) -> Value:
        hint = _choice_hint(name)
        if base.is_root:
            column = self.root_column(name)
            return Value(self.items_of(column), "coll", hint)
        if base.kind == "json":
            return Value(self.let(base.sql, lambda x: self.child_items(x, name)), "coll", hint)
        source = self.coll(base)
        var = self.fresh()
        return Value(f"flatten(list_transform({source}, lambda {var}: {self.child_items(var, name)}))", "coll", hint)

    @staticmethod
    def items_of(x: str) -> str:
        """The items of one JSON value: an array's elements, nothing for null/absent, else the value."""
        return (
            f"(CASE coalesce(json_type({x}), 'NULL') WHEN 'ARRAY' THEN json_extract({x}, '$[*]') "
            f"WHEN 'NULL' THEN {EMPTY} ELSE [{x}] END)"
        )

    @staticmethod
    def child_items(x: str, name: str) -> str:
        path = "$" + json_key(name)
        return (
            f"(CASE coalesce(json_type({x}, {q(path)}), 'NULL') WHEN 'ARRAY' THEN json_extract({x}, {q(path + '[*]')}) "
            f"WHEN 'NULL' THEN {EMPTY} ELSE [json_extract({x}, {q(path)})] END)"
        )

    # -- functions ------------------------------------------------------------------------------------

    def call(self, node: fp.Call, focus: Focus, row_index: str) -> Value:
        name = node.name
        base = self.focus_value(focus) if node.base is None else self.expr(node.base, focus, row_index)
        if name == "getResourceKey":
            if base.is_root:
                return Value(
                    f"(({self.root_column('resourceType')} ->> '$') || '/' || ({self.root_column('id')} ->> '$'))",
                    "str",
                )
            return Value(
                self.let(self.single(base), lambda x: f"(({x} ->> '$.resourceType') || '/' || ({x} ->> '$.id'))"), "str"
            )
        if name in ("exists", "empty") and base.is_root and not node.args:
            return Value("true" if name == "exists" else "false", "bool")
        if name == "not":
            return Value(f"(NOT {self.boolean(base)})", "bool")
        if name == "where" or (name == "exists" and node.args):
            var, idx = self.fresh(), self.fresh("i")
            inner = Focus(var, f"({idx} - 1)")
            criteria = self.boolean(self.expr(node.args[0], inner, row_index))
            filtered = f"list_filter({self.coll(base)}, lambda {var}, {idx}: coalesce({criteria}, false))"
            if name == "exists":
                return Value(f"(len({filtered}) > 0)", "bool")
            return Value(filtered, "coll", base.hint)
        if name == "exists":
            return Value(f"(len({self.coll(base)}) > 0)", "bool")
        if name == "empty":
            return Value(f"(len({self.coll(base)}) = 0)", "bool")
        if name == "count":
            return Value(f"(len({self.coll(base)})::DOUBLE)", "num", "integer")
        if name == "first":
            if base.is_root:
                return base
            return Value(self.single(base), "json", base.hint)
        if name == "last":
            return Value(f"({self.coll(base)})[-1]", "json", base.hint)
        if name == "ofType":
            return self.of_type(base, self.type_arg(node))
        if name == "is":
            type_name = self.type_arg(node)
            matched = self.of_type(Value(self.single(base), "json"), type_name)
            return Value(f"(len({self.coll(matched)}) > 0)", "bool")
        if name == "join":
            sep = self.text(self.expr(node.args[0], focus, row_index)) if node.args else "''"
            source = self.coll(base)
            var = self.fresh()
            # Over an empty collection this gives '' as the SQL on FHIR suite's "string join" cases expect,
            # not FHIRPath's general "empty in, empty out" (README, Tables: "Where the spec leaves room").
            return Value(
                self.let(
                    source,
                    lambda c: f"coalesce(array_to_string(list_transform({c}, lambda {var}: {var} ->> '$'), {sep}), '')",
                ),
                "str",
            )
        if name == "extension":
            url = self.text(self.expr(node.args[0], focus, row_index))
            items = self.member(base, "extension")
            var = self.fresh()
            return Value(f"list_filter({items.sql}, lambda {var}: ({var} ->> '$.url') = {url})", "coll")
        if name == "getReferenceKey":
            wanted = self.type_arg(node) if node.args else None

            def key(ref_json: str) -> str:
                found = f"nullif(regexp_extract({ref_json} ->> '$.reference', {q(_REFERENCE)}, 1), '')"
                if wanted:
                    found = f"(CASE WHEN starts_with({found}, {q(wanted + '/')}) THEN {found} END)"
                return f"to_json({found})"

            var = self.fresh()
            general = (
                f"list_filter(list_transform({self.coll(base)}, lambda {var}: {key(var)}), lambda _k: _k IS NOT NULL)"
            )
            if base.kind == "raw" and (base.fast or _SIMPLE.match(base.sql)):
                probe = base.fast or base.sql
                fast = f"(CASE WHEN json_type({probe}) = 'OBJECT' THEN {key(probe)} END)"
                return Value(f"coalesce({fast}, nullif(to_json({general}), '[]'::JSON))", "raw", fast=fast)
            return Value(general, "coll")
        if name in ("lowBoundary", "highBoundary"):
            return self.boundary(base, name == "lowBoundary")
        raise self.error(f"unsupported function {name}()")  # pragma: no cover - the parser refuses them

    def type_arg(self, node: fp.Call) -> str:
        arg = node.args[0]
        if not isinstance(arg, fp.TypeName):  # pragma: no cover - the parser makes type arguments
            raise self.error(f"{node.name}() needs a type name")
        return arg.name

    def of_type(self, base: Value, type_name: str) -> Value:
        """Filter by type where JSON shows it: primitives by their JSON kind, anything else by being an object."""
        if base.is_root:
            return Value(
                f"(CASE WHEN {self.root_column('resourceType')} ->> '$' = {q(type_name)} THEN {self.whole()} END)",
                "json",
                type_name,
            )
        if base.hint and base.hint != type_name and base.hint in _PRIMITIVE_JSON_TYPES | dict.fromkeys(_STRING_TYPES):
            return Value(EMPTY, "coll")
        if type_name in _PRIMITIVE_JSON_TYPES:
            kinds = _PRIMITIVE_JSON_TYPES[type_name]
        elif type_name in _STRING_TYPES:
            kinds = "('VARCHAR')"
        else:
            kinds = "('OBJECT')"
        var = self.fresh()
        return Value(f"list_filter({self.coll(base)}, lambda {var}: json_type({var}) IN {kinds})", "coll", type_name)

    def boundary(self, base: Value, low: bool) -> Value:
        """lowBoundary()/highBoundary() of a decimal, date, dateTime or time (experimental in the spec)."""
        hint = base.hint
        item = self.single(base)

        def decimal(x: str) -> str:
            digits = f"coalesce(length(split_part({x}::VARCHAR, '.', 2)), 0)"
            half = f"(0.5 / pow(10, {digits}))"
            return f"(CASE WHEN json_type({x}) IN {NUMERIC} THEN {x}::DOUBLE {'-' if low else '+'} {half} END)"

        def temporal(x: str) -> str:
            s = f"({x} ->> '$')"
            if hint is None:  # no type known: the text tells a time (12:34), a date (1970-06), a dateTime
                text = (
                    f"(CASE WHEN substr({s}, 3, 1) = ':' THEN {_boundary_text(s, 'time', low)} "
                    f"WHEN contains({s}, 'T') THEN {_boundary_text(s, 'dateTime', low)} "
                    f"ELSE {_boundary_text(s, 'date', low)} END)"
                )
            else:
                text = _boundary_text(s, hint, low)
            return f"(CASE WHEN json_type({x}) = 'VARCHAR' THEN {text} END)"

        if hint in ("decimal", "integer"):
            return Value(self.let(item, decimal), "num", "decimal")
        if hint in ("date", "dateTime", "instant", "time"):
            return Value(self.let(item, temporal), "str", hint)
        # Unknown type: decide from the value.
        return Value(
            self.let(
                item,
                lambda x: (
                    f"(CASE WHEN json_type({x}) IN {NUMERIC} THEN to_json({decimal(x)}) "
                    f"ELSE to_json({temporal(x)}) END)"
                ),
            ),
            "json",
            hint,
        )

    # -- operators ------------------------------------------------------------------------------------

    def binary(self, node: fp.Binary, focus: Focus, row_index: str) -> Value:
        op = node.op
        left = self.expr(node.left, focus, row_index)
        right = self.expr(node.right, focus, row_index)
        if op in ("and", "or"):
            return Value(f"({self.boolean(left)} {op.upper()} {self.boolean(right)})", "bool")
        if op == "xor":
            return Value(f"({self.boolean(left)} <> {self.boolean(right)})", "bool")
        if op == "implies":
            return Value(f"((NOT {self.boolean(left)}) OR {self.boolean(right)})", "bool")
        if op in ("=", "!=", "~", "!~"):
            equal = self.equals(left, right)
            return Value(f"(NOT {equal})" if op.startswith("!") else equal, "bool")
        if op in ("<", ">", "<=", ">="):
            return Value(self.compare(left, right, op), "bool")
        if op == "|":
            var, idx = self.fresh(), self.fresh("i")
            both = f"list_concat({self.coll(left)}, {self.coll(right)})"
            # Union without duplicates, in order of first appearance (list_distinct does not keep order).
            return Value(
                self.let(both, lambda c: f"list_filter({c}, lambda {var}, {idx}: list_position({c}, {var}) = {idx})"),
                "coll",
            )
        if op == "&":
            return Value(f"(coalesce({self.text(left)}, '') || coalesce({self.text(right)}, ''))", "str")
        if op == "+" and "str" in (left.kind, right.kind) and "num" not in (left.kind, right.kind):
            return Value(f"({self.text(left)} || {self.text(right)})", "str")
        if op in ("+", "-", "*", "/"):
            return Value(f"({self.number(left)} {op} {self.number(right)})", "num", "decimal")
        if op == "div":
            return Value(f"trunc({self.number(left)} / {self.number(right)})", "num", "integer")
        if op == "mod":
            return Value(f"fmod({self.number(left)}, {self.number(right)})", "num")
        if op in ("in", "contains"):
            item, collection = (left, right) if op == "in" else (right, left)
            var = self.fresh()
            test = self.let(
                self.single(item),
                lambda x: f"len(list_filter({self.coll(collection)}, lambda {var}: {self.json_equal(var, x)})) > 0",
            )
            return Value(test, "bool")
        raise self.error(f"unsupported operator {op}")  # pragma: no cover

    @staticmethod
    def json_equal(a: str, b: str) -> str:
        return (
            f"(CASE WHEN json_type({a}) IN {NUMERIC} AND json_type({b}) IN {NUMERIC} THEN {a}::DOUBLE = {b}::DOUBLE "
            f"ELSE ({a} ->> '$') = ({b} ->> '$') END)"
        )

    def equals(self, left: Value, right: Value) -> str:
        scalar = {"str", "num", "bool"}
        if left.kind in scalar and right.kind in scalar and left.kind == right.kind:
            return f"({left.sql} = {right.sql})"
        if left.kind in scalar | {"json"} and right.kind in scalar | {"json"}:
            return self.let(
                self.single(left),
                lambda a: self.let(self.single(right), lambda b: self.json_equal(a, b)),
            )
        var = self.fresh("i")

        def lists(a: str, b: str) -> str:
            same = self.json_equal(f"{a}[{var} + 1]", f"{b}[{var} + 1]")
            pairwise = f"list_bool_and(list_transform(range(len({a})), lambda {var}: {same}))"
            return (
                f"(CASE WHEN len({a}) = 0 OR len({b}) = 0 THEN NULL WHEN len({a}) <> len({b}) THEN false "
                f"ELSE {pairwise} END)"
            )

        return self.let(self.coll(left), lambda a: self.let(self.coll(right), lambda b: lists(a, b)))

    def compare(self, left: Value, right: Value, op: str) -> str:
        if left.kind == "num" or right.kind == "num":
            return f"({self.number(left)} {op} {self.number(right)})"

        def both(a: str, b: str) -> str:
            return (
                f"(CASE WHEN json_type({a}) IN {NUMERIC} AND json_type({b}) IN {NUMERIC} "
                f"THEN {a}::DOUBLE {op} {b}::DOUBLE "
                f"ELSE ({a} ->> '$') {op} ({b} ->> '$') END)"
            )

        return self.let(self.single(left), lambda a: self.let(self.single(right), lambda b: both(a, b)))

    # -- output values ------------------------------------------------------------------------------

    def column_value(self, column: ViewColumn, focus: Focus, row_index: str) -> str:
        """The typed SQL of one column."""
        self.location = column.location
        value = self.expr(column.expr, focus, row_index)
        ctype = column.type
        if column.collection:
            var = self.fresh()
            return f"list_transform({self.coll(value)}, lambda {var}: {self.cast(Value(var, 'json'), ctype)})"
        if value.kind == "raw":
            message = q(
                f"view {self.view.name}: column {column.name!r} ({column.location}) met several values; "
                "declare it collection: true, or pick one (first(), [0], where(...))"
            )

            def checked(v: str) -> str:
                many = f"(CASE WHEN json_array_length({v}) > 1 THEN error({message}) ELSE {v} -> '$[0]' END)"
                return (
                    f"(CASE WHEN json_type({v}) = 'ARRAY' THEN {self.cast(Value(many, 'json'), ctype)} "
                    f"ELSE {self.cast(Value(v, 'json'), ctype)} END)"
                )

            general = self.let(value.sql, checked)
            parts = _EXTRACT.match(value.fast or value.sql)
            if parts:  # the common case, a single value where the JSONPath ends, read without binding it
                base, path = parts.groups()
                extract = f"json_extract({base}, '{path}')"
                if duckdb_type(ctype) == "VARCHAR":
                    fast = f"json_extract_string({base}, '{path}')"
                else:
                    fast = self.cast(Value(extract, "json"), ctype)
                probe = f"json_type({base}, '{path}')"
                return f"(CASE WHEN {probe} NOT IN ('ARRAY', 'NULL') THEN {fast} ELSE {general} END)"
            if value.fast:
                fast = self.cast(Value(value.fast, "json"), ctype)
                return f"(CASE WHEN json_type({value.fast}) NOT IN ('ARRAY', 'NULL') THEN {fast} ELSE {general} END)"
            return general
        if value.kind == "coll":
            message = q(
                f"view {self.view.name}: column {column.name!r} ({column.location}) met several values; "
                "declare it collection: true, or pick one (first(), [0], where(...))"
            )
            single = self.let(value.sql, lambda c: f"(CASE WHEN len({c}) > 1 THEN error({message}) ELSE {c}[1] END)")
            value = Value(single, "json", value.hint)
        if value.is_root:
            value = Value(self.whole(), "json")
        return self.cast(value, ctype)

    def cast(self, value: Value, ctype: str | None) -> str:
        target = duckdb_type(ctype)
        if value.kind == "bool":
            return (
                value.sql
                if ctype in (None, "boolean")
                else f"NULL::{target}"
                if target != "VARCHAR"
                else f"CAST({value.sql} AS VARCHAR)"
            )
        if value.kind == "num":
            if ctype in INTEGER_TYPES:
                return f"(CASE WHEN {value.sql} = trunc({value.sql}) THEN TRY_CAST({value.sql} AS BIGINT) END)"
            if target == "VARCHAR":  # 3, not 3.0, for a whole number
                return self.let(
                    value.sql,
                    lambda x: (
                        f"(CASE WHEN {x} = trunc({x}) AND abs({x}) < 1e15 THEN CAST(CAST({x} AS BIGINT) AS VARCHAR) "
                        f"ELSE CAST({x} AS VARCHAR) END)"
                    ),
                )
            return f"TRY_CAST({value.sql} AS {target})"
        if value.kind == "str":
            return _cast_text(value.sql, ctype, target)
        x = value.sql
        if ctype == "boolean":
            return self.let(x, lambda v: f"(CASE WHEN json_type({v}) = 'BOOLEAN' THEN {v}::BOOLEAN END)")
        if ctype in INTEGER_TYPES:
            return self.let(
                x, lambda v: f"(CASE WHEN json_type({v}) IN ('BIGINT','UBIGINT') THEN TRY_CAST({v} AS BIGINT) END)"
            )
        if ctype == "decimal":
            return self.let(
                x, lambda v: f"(CASE WHEN json_type({v}) IN {NUMERIC} THEN TRY_CAST(({v})::VARCHAR AS {target}) END)"
            )
        if target != "VARCHAR":

            def from_text(v: str) -> str:
                text = _cast_text(f"({v} ->> '$')", ctype, target)
                return f"(CASE WHEN json_type({v}) = 'VARCHAR' THEN {text} END)"

            return self.let(x, from_text)
        return f"({x} ->> '$')"

    # -- rows ---------------------------------------------------------------------------------------

    def node_rows(
        self, node: SelectNode, focus: Focus, row_index: str
    ) -> tuple[list[tuple[str, str]] | None, str | None]:
        """``(flat, None)`` with one (name, sql) per column when the node gives one row per focus,
        else ``(None, list_sql)``: a list of row structs."""
        if node.iterate is not None or node.repeat:
            return None, self.iterated(node, focus)
        return self.body(node, focus, row_index)

    def body(self, node: SelectNode, focus: Focus, row_index: str) -> tuple[list[tuple[str, str]] | None, str | None]:
        flat: list[tuple[str, str]] = [(c.name, self.column_value(c, focus, row_index)) for c in node.columns]
        lists: list[tuple[list[str], str]] = []
        for child in node.selects:
            child_flat, child_list = self.node_rows(child, focus, row_index)
            names = [c.name for c in child.output_columns]
            if child_flat is not None:
                flat.extend(child_flat)
            else:
                assert child_list is not None
                lists.append((names, child_list))
        if node.union_all:
            branches = []
            for branch in node.union_all:
                b_flat, b_list = self.node_rows(branch, focus, row_index)
                branches.append(self.as_list(b_flat) if b_flat is not None else b_list)
            names = [c.name for c in node.union_all[0].output_columns]
            lists.append(
                (
                    names,
                    f"list_concat({', '.join(b for b in branches if b)})" if len(branches) > 1 else str(branches[0]),
                )
            )
        if not lists:
            return flat, None
        # Cross product of the flat part and every list, in the spec's column order.
        order = [c.name for c in node.output_columns]
        current_names = [name for name, _ in flat]
        current = self.as_list(flat) if flat else None
        for names, list_sql in lists:
            if current is None:
                current, current_names = list_sql, names
                continue
            a, b = self.fresh("r"), self.fresh("r")
            merged = current_names + names
            fields = ", ".join(
                f"{q(n)}: {a}.{ident(n)}" if n in current_names else f"{q(n)}: {b}.{ident(n)}" for n in merged
            )
            current = (
                f"flatten(list_transform({current}, lambda {a}: list_transform({list_sql}, lambda {b}: {{{fields}}})))"
            )
            current_names = merged
        if current_names != order:
            r = self.fresh("r")
            current = (
                f"list_transform({current}, lambda {r}: {{{', '.join(f'{q(n)}: {r}.{ident(n)}' for n in order)}}})"
            )
        return None, current

    def as_list(self, flat: list[tuple[str, str]]) -> str:
        return "[{" + ", ".join(f"{q(name)}: {sql}" for name, sql in flat) + "}]"

    def iterated(self, node: SelectNode, focus: Focus) -> str:
        if node.repeat:
            self.location = node.location + ".repeat"
            items = self.repeat_items(node.repeat, focus)
        else:
            assert node.iterate is not None
            self.location = node.location + (".forEachOrNull" if node.or_null else ".forEach")
            items = self.coll(self.expr(node.iterate, focus, "0"))
        var, idx = self.fresh(), self.fresh("i")
        inner_index = f"({idx} - 1)"
        b_flat, b_list = self.body(node, Focus(var, inner_index), inner_index)
        if b_flat is not None:  # one row per item: no inner lists to flatten
            row = "{" + ", ".join(f"{q(name)}: {sql}" for name, sql in b_flat) + "}"

            def mapped(c: str) -> str:
                return f"list_transform({c}, lambda {var}, {idx}: {row})"
        else:

            def mapped(c: str) -> str:
                return f"flatten(list_transform({c}, lambda {var}, {idx}: {b_list}))"

        if not node.or_null:
            return mapped(items)
        null_row = self.null_row(node)
        return self.let(items, lambda c: f"(CASE WHEN len({c}) = 0 THEN {null_row} ELSE {mapped(c)} END)")

    def null_row(self, node: SelectNode) -> str:
        """forEachOrNull over nothing: one row of nulls (``%rowIndex`` columns say 0), typed like the real rows."""
        fields = []
        for column in node.output_columns:
            target = duckdb_type(column.type) + ("[]" if column.collection else "")
            is_index = column in node.columns and column.expr == fp.Var("rowIndex")
            fields.append(f"{q(column.name)}: {'0' if is_index else 'NULL'}::{target}")
        return "[{" + ", ".join(fields) + "}]"

    def repeat_items(self, paths: Sequence[fp.Node], focus: Focus) -> str:
        """Depth-first, pre-order: each item, then the items reached from it, as far as REPEAT_DEPTH.

        Built level by level (level k from level k-1, each item keyed by its index path), then ordered by
        key: nesting the levels inside one another's lambdas instead costs DuckDB's binder twice per level.
        """

        def children(var: str | None) -> str:
            inner = Focus(var)
            self.fast_enabled = False  # the general form is shorter, and the SQL repeats it per level
            try:
                parts = [self.coll(self.expr(p, inner, "0")) for p in paths]
            finally:
                self.fast_enabled = True
            return parts[0] if len(parts) == 1 else f"list_concat({', '.join(parts)})"

        item, idx = self.fresh(), self.fresh("i")
        level = f"list_transform({children(focus.var)}, lambda {item}, {idx}: {{'k': [{idx}], 'v': {item}}})"
        levels = [level]
        for _ in range(REPEAT_DEPTH - 1):
            parent, item, idx = self.fresh("p"), self.fresh(), self.fresh("i")
            keyed = f"{{'k': list_append({parent}.k, {idx}), 'v': {item}}}"
            inner = f"list_transform({children(parent + '.v')}, lambda {item}, {idx}: {keyed})"
            level = f"flatten(list_transform({level}, lambda {parent}: {inner}))"
            levels.append(level)
        ordered = f"list_sort(list_concat({', '.join(levels)}))"
        out = self.fresh()
        return f"list_transform({ordered}, lambda {out}: {out}.v)"


def node_first_key(node: fp.Node) -> str:
    """The first field name of a chain (``code`` in ``code.coding[0].code``)."""
    current: fp.Node | None = node
    name = ""
    while current is not None:
        if isinstance(current, fp.Member):
            name = current.name
            current = current.base
        elif isinstance(current, fp.Call | fp.Index):
            current = current.base
        else:
            break
    return name


def _choice_hint(name: str) -> str | None:
    """``valueDateTime`` -> ``dateTime``: the type a choice key names, used by lowBoundary() and ofType()."""
    match = re.search(
        r"[a-z](Boolean|Integer|Integer64|Decimal|String|Date|DateTime|Instant|Time|Code|Uri|Url|Id|Oid|Uuid|Canonical|PositiveInt|UnsignedInt|Base64Binary|Markdown)$",
        name,
    )
    if not match:
        return None
    word = match.group(1)
    return word[:1].lower() + word[1:]


def _cast_text(s: str, ctype: str | None, target: str) -> str:
    """Text to the column's type; what does not parse becomes NULL."""
    if target == "VARCHAR":
        return s
    if ctype == "date":
        return f"TRY_CAST(left({s}, 10) || substr('-01-01', length(left({s}, 10)) - 3) AS DATE)"
    if ctype in DATETIME_TYPES:
        padded = f"(CASE WHEN length({s}) < 10 THEN {s} || substr('-01-01', length({s}) - 3) ELSE {s} END)"
        return f"TRY_CAST({padded} AS TIMESTAMPTZ)"
    return f"TRY_CAST({s} AS {target})"


def _boundary_text(s: str, hint: str | None, low: bool) -> str:
    """The boundary of a date / dateTime / time text, as text with full precision (FHIRPath 3.0 rules)."""
    if hint == "time":
        if low:  # 12:34 -> 12:34:00.000
            return f"({s} || substr('00:00:00.000', length({s}) + 1))"
        # 12:34 -> 12:34:59.999; 12:34:00 -> 12:34:00.999
        return f"(CASE length({s}) WHEN 5 THEN {s} || ':59.999' WHEN 8 THEN {s} || '.999' ELSE {s} END)"
    date_part = f"left({s}, 10)"
    if low:
        full_date = f"({date_part} || substr('-01-01', length({date_part}) - 3))"
    else:
        full_date = (
            f"(CASE length({date_part}) WHEN 4 THEN {date_part} || '-12-31' "
            f"WHEN 7 THEN strftime(last_day(({date_part} || '-01')::DATE), '%Y-%m-%d') ELSE {date_part} END)"
        )
    if hint == "date":
        return full_date
    # dateTime: without a time the day's first (last) instant anywhere on Earth: +14:00 (-12:00).
    time_part = f"substr({s}, 12)"
    if low:
        tail = f"(CASE WHEN length({s}) <= 10 THEN 'T00:00:00.000+14:00' ELSE 'T' || {time_part} END)"
    else:
        tail = f"(CASE WHEN length({s}) <= 10 THEN 'T23:59:59.999-12:00' ELSE 'T' || {time_part} END)"
    return f"({full_date} || {tail})"
