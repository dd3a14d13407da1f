"""The reference evaluator: a ViewDefinition run in plain Python over resource dicts (for differential tests)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .definition import ViewDefinition, load_view


def evaluate_view(view: ViewDefinition | Mapping[str, Any], resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The view's rows over ``resources``, as dicts of typed Python values."""
    load_view(view)
    raise NotImplementedError("the reference evaluator lands in the next commit")
