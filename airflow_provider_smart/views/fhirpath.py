"""A parser for the FHIRPath subset that SQL on FHIR v2 views use, into a small immutable syntax tree.

Both the DuckDB compiler (``sql.py``) and the reference evaluator (``evaluate.py``) walk this tree, so
they agree on what an expression means. One rewrite happens here, for both: a member followed by
``ofType(T)`` (``value.ofType(Quantity)``) becomes the JSON key of the choice element (``valueQuantity``),
which is how FHIR JSON spells it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..exceptions import ViewDefinitionError

# Node kinds. Every node is a tuple-like frozen dataclass: cheap, hashable, printable.


@dataclass(frozen=True)
class Literal:
    value: object  # str, int, float (decimal text kept in ``text``), bool, or None for {}
    kind: str  # "string" | "integer" | "decimal" | "boolean" | "date" | "dateTime" | "time" | "empty"
    text: str = ""


@dataclass(frozen=True)
class This:
    """``$this``; with ``name == "$index"`` the index of the current item."""

    name: str = "$this"


@dataclass(frozen=True)
class Var:
    """``%name``: a view constant or ``%rowIndex`` / ``%resource`` / ``%rootResource``."""

    name: str


@dataclass(frozen=True)
class Member:
    """``base.name``; ``base`` None means the current focus (a path's first step)."""

    base: Node | None
    name: str


@dataclass(frozen=True)
class Call:
    """``base.name(args)``; ``base`` None means the current focus."""

    base: Node | None
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Index:
    base: Node
    index: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "+"
    operand: Node


@dataclass(frozen=True)
class TypeName:
    """A type specifier argument (``ofType(Quantity)``, ``getReferenceKey(Patient)``)."""

    name: str


Node = Literal | This | Var | Member | Call | Index | Binary | Unary | TypeName

# Functions the engine implements, with their (min, max) argument counts.
FUNCTIONS: dict[str, tuple[int, int]] = {
    "where": (1, 1),
    "exists": (0, 1),
    "empty": (0, 0),
    "first": (0, 0),
    "last": (0, 0),
    "count": (0, 0),
    "not": (0, 0),
    "ofType": (1, 1),
    "join": (0, 1),
    "extension": (1, 1),
    "getResourceKey": (0, 0),
    "getReferenceKey": (0, 1),
    "lowBoundary": (0, 1),
    "highBoundary": (0, 1),
    "is": (1, 1),
}
TYPE_ARGUMENT_FUNCTIONS = frozenset({"ofType", "getReferenceKey", "is"})
CRITERIA_FUNCTIONS = frozenset({"where", "exists"})

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<datetime>@\d{4}(?:-\d{2}(?:-\d{2})?)?(?:T(?:\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)?(?:Z|[+-]\d{2}:\d{2})?)?)
  | (?P<time>@T\d{2}(?::\d{2}(?::\d{2}(?:\.\d+)?)?)?)
  | (?P<number>\d+(?:\.\d+)?L?)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<quoted>`(?:[^`\\]|\\.)*`)
  | (?P<special>\$(?:this|index|total)\b)
  | (?P<var>%(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|!=|!~|[-+*/&|=~<>(),.\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "f": "\f", "'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/"}
# Binary operators by binding power (higher binds tighter), as in the FHIRPath grammar.
_BINARY = {
    "implies": 10,
    "or": 20,
    "xor": 20,
    "and": 30,
    "in": 40,
    "contains": 40,
    "=": 50,
    "~": 50,
    "!=": 50,
    "!~": 50,
    "<": 60,
    ">": 60,
    "<=": 60,
    ">=": 60,
    "|": 70,
    "+": 90,
    "-": 90,
    "&": 90,
    "*": 100,
    "/": 100,
    "div": 100,
    "mod": 100,
}
_WORD_OPERATORS = frozenset({"implies", "or", "xor", "and", "in", "contains", "div", "mod", "is", "as"})


def _unescape(body: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", lambda m: _unescape_one(m.group(1)), body)


def _unescape_one(code: str) -> str:
    if code.startswith("u") and len(code) == 5:
        return chr(int(code[1:], 16))
    return _ESCAPES.get(code, code)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokenize(source: str, where: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if not match:
            raise ViewDefinitionError(
                f"{where}: FHIRPath {source!r} has an unexpected character {source[pos]!r} at offset {pos}", path=where
            )
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(_Token("end", "", len(source)))
    return tokens


class _Parser:
    def __init__(self, source: str, where: str) -> None:
        self.source = source
        self.where = where
        self.tokens = _tokenize(source, where)
        self.pos = 0

    def error(self, message: str) -> ViewDefinitionError:
        token = self.tokens[self.pos]
        return ViewDefinitionError(
            f"{self.where}: FHIRPath {self.source!r}: {message} at offset {token.pos}", path=self.where
        )

    @property
    def token(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        if self.token.text != text or self.token.kind not in ("op", "ident"):
            raise self.error(f"expected {text!r}, found {self.token.text or 'the end'!r}")
        self.pos += 1

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise self.error("empty expression")
        node = self.expression(0)
        if self.token.kind != "end":
            raise self.error(f"unexpected {self.token.text!r}")
        return node

    def expression(self, min_power: int) -> Node:
        left = self.unary()
        while True:
            token = self.token
            op = token.text
            if token.kind == "ident" and op in ("is", "as"):
                if min_power > 80:
                    break
                self.take()
                type_name = self.type_specifier()
                left = _typed_call(left, "ofType" if op == "as" else "is", (TypeName(type_name),))
                continue
            if not (token.kind == "op" or (token.kind == "ident" and op in _WORD_OPERATORS)) or op not in _BINARY:
                break
            power = _BINARY[op]
            if power < min_power:
                break
            self.take()
            right = self.expression(power + 1)
            left = Binary(op, left, right)
        return left

    def unary(self) -> Node:
        if self.token.kind == "op" and self.token.text in ("-", "+"):
            op = self.take().text
            operand = self.unary()
            if op == "-" and isinstance(operand, Literal) and operand.kind in ("integer", "decimal"):
                value = operand.value
                assert isinstance(value, int | float)
                return Literal(-value, operand.kind, "-" + operand.text)
            return Unary(op, operand)
        return self.postfix(self.term())

    def postfix(self, node: Node) -> Node:
        while True:
            if self.token.text == "." and self.token.kind == "op":
                self.take()
                node = self.invocation(node)
            elif self.token.text == "[" and self.token.kind == "op":
                self.take()
                index = self.expression(0)
                self.expect("]")
                node = Index(node, index)
            else:
                return node

    def identifier(self) -> str:
        token = self.take()
        if token.kind == "ident":
            return token.text
        if token.kind == "quoted":
            return _unescape(token.text[1:-1])
        self.pos -= 1
        raise self.error(f"expected a name, found {token.text or 'the end'!r}")

    def type_specifier(self) -> str:
        name = self.identifier()
        while self.token.text == "." and self.tokens[self.pos + 1].kind in ("ident", "quoted"):
            self.take()
            name = self.identifier()  # FHIR.Quantity / System.String: the last part names the type
        return name

    def invocation(self, base: Node | None) -> Node:
        if self.token.kind == "special":
            raise self.error(f"{self.token.text} cannot follow '.'")
        name = self.identifier()
        if self.token.text == "(" and self.token.kind == "op":
            return self.call(base, name)
        return Member(base, name)

    def call(self, base: Node | None, name: str) -> Node:
        self.expect("(")
        args: list[Node] = []
        if name not in FUNCTIONS:
            self.pos -= 2
            raise self.error(f"unsupported function {name}()")
        if not (self.token.text == ")" and self.token.kind == "op"):
            while True:
                if name in TYPE_ARGUMENT_FUNCTIONS:
                    args.append(TypeName(self.type_specifier()))
                else:
                    args.append(self.expression(0))
                if self.token.text == "," and self.token.kind == "op":
                    self.take()
                    continue
                break
        self.expect(")")
        low, high = FUNCTIONS.get(name, (1, 1))
        if not low <= len(args) <= high:
            raise self.error(f"{name}() takes {low}..{high} arguments, got {len(args)}")
        return _typed_call(base, name, tuple(args))

    def term(self) -> Node:
        token = self.token
        if token.kind == "number":
            self.take()
            text = token.text.rstrip("L")
            if "." in text:
                return Literal(float(text), "decimal", text)
            return Literal(int(text), "integer", text)
        if token.kind == "string":
            self.take()
            return Literal(_unescape(token.text[1:-1]), "string", token.text)
        if token.kind == "datetime":
            self.take()
            text = token.text[1:]
            kind = "dateTime" if "T" in text else "date"
            return Literal(text.rstrip("T"), kind, token.text)
        if token.kind == "time":
            self.take()
            return Literal(token.text[2:], "time", token.text)
        if token.kind == "special":
            self.take()
            return This(token.text)
        if token.kind == "var":
            self.take()
            body = token.text[1:]
            return Var(_unescape(body[1:-1]) if body[:1] in "`'" else body)
        if token.kind == "ident" and token.text in ("true", "false"):
            self.take()
            return Literal(token.text == "true", "boolean", token.text)
        if token.kind == "op" and token.text == "(":
            self.take()
            node = self.expression(0)
            self.expect(")")
            return node
        if token.kind == "op" and token.text == "{":
            self.take()
            self.expect("}")
            return Literal(None, "empty", "{}")
        if token.kind in ("ident", "quoted"):
            return self.invocation(None)
        raise self.error(f"unexpected {token.text or 'end of expression'!r}")


def _typed_call(base: Node | None, name: str, args: tuple[Node, ...]) -> Node:
    """A call node; ``member.ofType(T)`` becomes the choice element's JSON key ``memberT``."""
    if name == "ofType" and isinstance(base, Member) and isinstance(args[0], TypeName):
        type_name = args[0].name
        return Member(base.base, base.name + type_name[:1].upper() + type_name[1:])
    return Call(base, name, args)


def parse(source: str, where: str) -> Node:
    """Parse ``source``; ``where`` is the view's JSON path to it, named by any error."""
    if not isinstance(source, str):
        raise ViewDefinitionError(f"{where}: expected a FHIRPath string, got {type(source).__name__}", path=where)
    node = _Parser(source, where).parse()
    if isinstance(node, TypeName):  # pragma: no cover - the grammar never yields a bare type
        raise ViewDefinitionError(f"{where}: not an expression", path=where)
    return node


def walk(node: Node) -> list[Node]:
    """Every node of the tree, ``node`` first."""
    out: list[Node] = [node]
    children: tuple[Node | None, ...] = ()
    if isinstance(node, Member):
        children = (node.base,)
    elif isinstance(node, Call):
        children = (node.base, *node.args)
    elif isinstance(node, Index):
        children = (node.base, node.index)
    elif isinstance(node, Binary):
        children = (node.left, node.right)
    elif isinstance(node, Unary):
        children = (node.operand,)
    for child in children:
        if child is not None:
            out.extend(walk(child))
    return out
