"""SMART scopes for the sandbox: v2 ``context/Type.cruds[?query]`` (v1 ``.read/.write/.*`` mapped) and the
non-resource App Launch scopes (``openid``, ``launch/patient``, ``offline_access``, ...)."""

from __future__ import annotations

from dataclasses import dataclass

_V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}

# Non-resource scopes of SMART App Launch: granted when the client registered the exact same string.
LAUNCH_SCOPES = frozenset(
    ("openid", "fhirUser", "launch", "launch/patient", "launch/encounter", "offline_access", "online_access")
)


# -- resource scopes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """A parsed ``context/Type.perms[?query]`` scope; v1 ``.read/.write/.*`` mapped to v2 letters."""

    context: str
    resource: str
    perms: frozenset[str]
    text: str

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        context, slash, rest = text.partition("/")
        if not slash or context not in ("system", "user", "patient"):
            return None
        resource, dot, perms = rest.partition(".")
        perms = perms.split("?", 1)[0]
        if not dot or not resource or not (resource == "*" or resource.isalnum()):
            return None
        letters = _V1_PERMS.get(perms, perms)
        if not letters or not _in_order_subset(letters, "cruds"):
            return None
        return cls(context, resource, frozenset(letters), text)

    def covers(self, other: Scope) -> bool:
        return self.context == other.context and self.resource in ("*", other.resource) and other.perms <= self.perms

    def allows(self, resource_type: str, need: str, context: str | None = "system") -> bool:
        """Whether this scope permits ``need`` on ``resource_type``; ``context=None`` accepts any context."""
        if context is not None and self.context != context:
            return False
        return self.resource in ("*", resource_type) and set(need) <= self.perms


def _in_order_subset(letters: str, alphabet: str) -> bool:
    position = -1
    for letter in letters:
        index = alphabet.find(letter)
        if index <= position:
            return False
        position = index
    return True


def parse_scopes(text: str) -> list[Scope]:
    return [scope for scope in (Scope.parse(s) for s in text.split()) if scope is not None]


def grant_scopes(requested: str, registered: list[Scope], extra: frozenset[str] = frozenset()) -> list[str]:
    """The requested scope strings that some registered scope covers, in request order.

    ``extra`` holds registered non-resource scopes (``openid``, ``launch/patient``, ...): granted verbatim.
    """
    granted: list[str] = []
    for text in requested.split():
        if text in granted:
            continue
        scope = Scope.parse(text)
        if text in extra or (scope and any(r.covers(scope) for r in registered)):
            granted.append(text)
    return granted
