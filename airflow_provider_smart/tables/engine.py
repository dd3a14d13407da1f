"""The one place the tables step meets the view engine (:mod:`airflow_provider_smart.views`).

ViewDefinitions come as dicts, JSON files or folders of them; each is validated by the engine
(:func:`~airflow_provider_smart.views.load_view`: a malformed one raises ``ViewDefinitionError`` naming
the JSON path at fault, before any file is read) and becomes a :class:`ViewSpec` (table name, resource
type, definition). Rows come from the engine in typed Arrow batches with one more column,
:data:`KEY_COLUMN`: the resource's ``id``, the key a later incremental run replaces rows by.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_provider_smart.exceptions import TablesError, ViewDefinitionError

TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
KEY_COLUMN = "_resource_id"  # the engine's DEFAULT_RESOURCE_ID_COLUMN (views/ is imported lazily)
BATCH_ROWS = 100_000


@dataclass(frozen=True)
class ViewSpec:
    name: str
    resource: str
    definition: dict[str, Any]


def collect_views(views: Any, render: Callable[[str], str] | None = None) -> list[ViewSpec]:
    """ViewDefinitions from a dict, a JSON file, a folder of ``*.json`` files, or a list of any of them.

    ``render`` (the operator's Jinja rendering) is applied to each file's text before it is parsed. The
    table is named by the view's ``name`` (else the file's stem); names must be unique.
    """
    found: list[ViewSpec] = []
    for item in _as_items(views):
        if isinstance(item, dict):
            found.append(_spec(item, None))
            continue
        path = Path(str(item)).expanduser()
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise TablesError(f"The views folder {path} holds no *.json ViewDefinition.", views=str(path))
        for file in files:
            if not file.is_file():
                raise TablesError(f"The ViewDefinition file {file} does not exist.", views=str(file))
            text = file.read_text()
            try:
                definition = json.loads(render(text) if render else text)
            except ValueError as exc:
                raise TablesError(f"The ViewDefinition file {file} is not JSON: {exc}", views=str(file)) from None
            found.append(_spec(definition, file))
    names = [v.name for v in found]
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        raise TablesError(f"Two views would write the same table: {', '.join(doubles)}; give them distinct names.")
    if not found:
        raise TablesError("No ViewDefinition given: pass views= a dict, a JSON file or a folder of them.")
    return found


def _as_items(views: Any) -> Iterable[Any]:
    if isinstance(views, dict | str | Path):
        return [views]
    return list(views or [])


def _spec(definition: Any, file: Path | None) -> ViewSpec:
    where = str(file) if file else "a ViewDefinition"
    if not isinstance(definition, dict):
        raise TablesError(f"{where} is not a JSON object.")
    name = definition.get("name") or (file.stem if file else None)
    resource = definition.get("resource")
    if not isinstance(resource, str) or not resource:
        raise TablesError(f"{where} has no 'resource' (the FHIR resource type it reads).", views=where)
    if not isinstance(name, str) or not TABLE_NAME.fullmatch(name):
        raise TablesError(
            f"{where}: the table name {name!r} (the view's 'name') must be a letter then letters, digits or _.",
            views=where,
        )
    from airflow_provider_smart.views import load_view

    try:
        load_view(definition)
    except ViewDefinitionError as exc:
        raise ViewDefinitionError(f"{where}: {exc.message}", **exc.context) from None
    spec = ViewSpec(name=name, resource=resource, definition=definition)
    view_schema(spec)  # a view whose column is named like KEY_COLUMN is refused here, before any data
    return spec


def view_schema(view: ViewSpec) -> Any:
    """The Arrow schema of the view's rows (with :data:`KEY_COLUMN`), known without any data."""
    from airflow_provider_smart.views import compile_view

    return compile_view(view.definition, resource_id_column=KEY_COLUMN).arrow_schema


def view_batches(view: ViewSpec, ndjson_files: list[Path]) -> Iterable[Any]:
    """The view's rows over these NDJSON files, typed Arrow record batches with :data:`KEY_COLUMN`."""
    from airflow_provider_smart.views import iter_view_batches

    files = [str(p) for p in ndjson_files]
    return iter_view_batches(view.definition, files, resource_id_column=KEY_COLUMN, batch_rows=BATCH_ROWS)


def resource_ids(ndjson_files: list[Path]) -> list[str]:
    """The ``id`` of every resource in these NDJSON files (a resource whose rows are all filtered out by a
    ``where`` must still lose its earlier rows)."""
    if not ndjson_files:
        return []
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute(
            "SELECT id FROM read_json(?, format='newline_delimited', columns={'id': 'VARCHAR'}) WHERE id IS NOT NULL",
            [[str(p) for p in ndjson_files]],
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]
