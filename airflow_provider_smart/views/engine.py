"""Run a compiled view with DuckDB: the SQL around the compiled rows, the typed Arrow schema, batches."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..exceptions import ViewRunError
from .definition import ViewDefinition, load_view
from .sql import Compiler, Focus, ident, q
from .types import arrow_type

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

# One resource may be large (a Binary, a big Bundle-like QuestionnaireResponse): DuckDB's default is 16 MB.
MAX_RESOURCE_BYTES = 256 * 1024 * 1024
DEFAULT_BATCH_ROWS = 65_536
ViewSource = ViewDefinition | Mapping[str, Any] | str | Path


@dataclass(frozen=True)
class CompiledView:
    """A view ready to run: ``sql(files)`` is one SELECT; ``arrow_schema`` types its result."""

    view: ViewDefinition
    resource_id_column: str | None
    _select: str  # the SELECT with "{source}" where the file reader goes
    _root_keys: tuple[str, ...]
    _whole_resource: bool

    @property
    def arrow_schema(self) -> pa.Schema:
        import pyarrow as pa

        fields = [pa.field(c.name, arrow_type(c.type, c.collection)) for c in self.view.columns]
        if self.resource_id_column:
            fields.append(pa.field(self.resource_id_column, pa.string(), nullable=False))
        return pa.schema(fields)

    def sql(self, ndjson_files: Sequence[str | os.PathLike[str]]) -> str:
        """The DuckDB SELECT over ``ndjson_files`` (at least one file)."""
        if not ndjson_files:
            raise ValueError("sql() needs at least one file; run_view() gives an empty table for none")
        return self._select.replace("{source}", self._source(ndjson_files), 1)

    def _source(self, files: Sequence[str | os.PathLike[str]]) -> str:
        file_list = "[" + ", ".join(q(os.fspath(f)) for f in files) + "]"
        keys = list(dict.fromkeys(["resourceType", "id", *self._root_keys]))
        if self._whole_resource:
            paths = "[" + ", ".join(q("$." + ident(k)) for k in keys) + "]"
            picks = ", ".join(f"__f[{i}] AS {ident(k)}" for i, k in enumerate(keys, start=1))
            return (
                f"(SELECT __resource, {picks} FROM (SELECT json AS __resource, json_extract(json, {paths}) AS __f "
                f"FROM read_ndjson_objects({file_list}, maximum_object_size={MAX_RESOURCE_BYTES})))"
            )
        columns = "{" + ", ".join(f"{q(k)}: 'JSON'" for k in keys) + "}"
        return (
            f"read_json({file_list}, format='newline_delimited', records=true, columns={columns}, "
            f"maximum_object_size={MAX_RESOURCE_BYTES})"
        )


def compile_view(view: ViewSource | CompiledView, *, resource_id_column: str | None = None) -> CompiledView:
    """Compile a view (validating it first when given as a dict or a path). A ``CompiledView`` is kept as
    it is unless another ``resource_id_column`` is asked for."""
    if isinstance(view, CompiledView):
        if resource_id_column is None or view.resource_id_column == resource_id_column:
            return view
        view = view.view
    definition = load_view(view)
    if resource_id_column is not None and resource_id_column in {c.name for c in definition.columns}:
        from ..exceptions import ViewDefinitionError

        raise ViewDefinitionError(
            f"resource_id_column {resource_id_column!r} is also a column of view {definition.name}",
            path="resource_id_column",
        )
    compiler = Compiler(definition)
    root = Focus()
    filters = [f"({compiler.root_column('resourceType')} ->> '$') = {q(definition.resource)}"]
    for node, location in definition.where:
        compiler.location = location
        value = compiler.expr(node, root, "0")
        filters.append(f"coalesce({compiler.boolean(value, strict_where=location)}, false)")
    flat, rows = compiler.body(definition.root, root, "0")
    rid = f"({compiler.root_column('id')} ->> '$')"
    names = [c.name for c in definition.columns]
    where = " AND ".join(filters)
    if flat is not None:
        outputs = [f"{sql} AS {ident(name)}" for name, sql in flat]
        if resource_id_column:
            outputs.append(f"{rid} AS {ident(resource_id_column)}")
        select = f"SELECT {', '.join(outputs)} FROM {{source}} AS __src WHERE {where}"
    else:
        outputs = [f"__row.{ident(n)} AS {ident(n)}" for n in names]
        if resource_id_column:
            outputs.append(f"__rid AS {ident(resource_id_column)}")
        select = (
            f"SELECT {', '.join(outputs)} FROM (SELECT unnest({rows}) AS __row, {rid} AS __rid "
            f"FROM {{source}} AS __src WHERE {where})"
        )
    return CompiledView(
        view=definition,
        resource_id_column=resource_id_column,
        _select=select,
        _root_keys=tuple(compiler.root_keys),
        _whole_resource=compiler.whole_resource,
    )


def _connect(connection: duckdb.DuckDBPyConnection | None, threads: int | None) -> duckdb.DuckDBPyConnection:
    import duckdb

    if connection is not None:
        return connection
    # Never fetch an extension from the network mid-run (JSON is built in; TIMESTAMPTZ is UTC without ICU).
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    # Rows need no particular order; without it DuckDB streams with less memory.
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    return con


def iter_view_batches(
    view: ViewSource | CompiledView,
    ndjson_files: Sequence[str | os.PathLike[str]],
    *,
    connection: duckdb.DuckDBPyConnection | None = None,
    resource_id_column: str | None = None,
    threads: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """The view's rows as typed Arrow record batches, streamed (memory stays bounded as files grow)."""
    compiled = compile_view(view, resource_id_column=resource_id_column)
    schema = compiled.arrow_schema
    if not ndjson_files:
        return
    con = _connect(connection, threads)
    try:
        import duckdb

        try:
            reader = con.sql(compiled.sql(ndjson_files)).to_arrow_reader(batch_rows)
            for batch in reader:
                yield _conform(batch, schema)
        except duckdb.Error as exc:
            raise ViewRunError(
                f"view {compiled.view.name} failed over {len(ndjson_files)} file(s): {exc}",
                view=compiled.view.name,
                files=[os.fspath(f) for f in ndjson_files[:20]],
            ) from None
    finally:
        if connection is None:
            con.close()


def run_view(
    view: ViewSource | CompiledView,
    ndjson_files: Sequence[str | os.PathLike[str]],
    *,
    connection: duckdb.DuckDBPyConnection | None = None,
    resource_id_column: str | None = None,
    threads: int | None = None,
) -> pa.Table:
    """The view's rows as one typed Arrow table (empty, with the schema, when nothing matches)."""
    import pyarrow as pa

    compiled = compile_view(view, resource_id_column=resource_id_column)
    batches = list(iter_view_batches(compiled, ndjson_files, connection=connection, threads=threads))
    return pa.Table.from_batches(batches, schema=compiled.arrow_schema)


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """DuckDB gives the right types; time zones and nullability flags are set to the schema's."""
    import pyarrow as pa

    if batch.schema.equals(schema):
        return batch
    columns = [batch.column(i).cast(field.type) for i, field in enumerate(schema)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
