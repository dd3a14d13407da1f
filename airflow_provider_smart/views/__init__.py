"""SQL on FHIR v2 views compiled to DuckDB SQL over NDJSON files: tables, not files.

Airflow-free. The public API (small and stable; everything else in this package is internal)::

    from airflow_provider_smart.views import load_view, compile_view, run_view, iter_view_batches

    view = load_view("views/observations.json")      # or a dict, or JSON text; validates
    view.name, view.resource                          # "observations", "Observation"
    view.columns                                      # (ViewColumn(name, type, collection), ...) in order

    compiled = compile_view(view, resource_id_column="_resource_id")   # the hidden column is optional
    compiled.arrow_schema                             # pyarrow.Schema: typed columns (see types.py)
    compiled.sql(["Observation.1.ndjson", ...])       # one DuckDB SELECT statement over those files

    table = run_view(view, files)                     # pyarrow.Table, typed; empty with the schema if no rows
    for batch in iter_view_batches(view, files, batch_rows=100_000):   # pyarrow.RecordBatch, bounded memory
        ...

- ``load_view(source)`` raises :class:`~airflow_provider_smart.exceptions.ViewDefinitionError` (a
  ``SmartError`` and ``ValueError``) whose ``.path`` is the JSON path at fault (``select[0].column[1].path``).
- ``compile_view(view, *, resource_id_column=None)``: with ``resource_id_column`` set, every row also carries
  its resource's ``id`` in that column (after the view's columns), so a consumer can replace or delete all
  rows of one resource at once (``forEach`` gives a resource many rows).
- ``run_view`` / ``iter_view_batches(view, ndjson_files, *, connection=None, resource_id_column=None, threads=None)``
  accept a view, a dict, a path or a ``CompiledView``; files may hold several resource types (rows come from
  the view's resource type only). Files are local paths (``.ndjson``, or gzip ``.ndjson.gz``): the engine
  fetches no DuckDB extension, so remote storage is staged locally first. ``connection`` is a DuckDB
  connection to use (else a private one: ``threads`` applies to it).
  A resource that breaks a rule only the data can show (several values in a column without
  ``collection: true``, a non-boolean ``where``) raises :class:`~airflow_provider_smart.exceptions.ViewRunError`.
- Keys: ``getResourceKey()`` is ``"<type>/<id>"``, and ``getReferenceKey()`` gives the same key for a
  relative reference (``Patient/123``, ``Patient/123/_history/2``); other references give no key.
"""

from __future__ import annotations

from .definition import ViewColumn, ViewDefinition, load_view
from .engine import CompiledView, compile_view, iter_view_batches, run_view

DEFAULT_RESOURCE_ID_COLUMN = "_resource_id"

__all__ = [
    "DEFAULT_RESOURCE_ID_COLUMN",
    "CompiledView",
    "ViewColumn",
    "ViewDefinition",
    "compile_view",
    "iter_view_batches",
    "load_view",
    "run_view",
]
