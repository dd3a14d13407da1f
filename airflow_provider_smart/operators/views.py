"""SQL on FHIR views over a landed Bulk Data export, written as tables (Delta, Parquet, a DuckDB file).

A thin adapter over :class:`~airflow_provider_smart.tables.workflow.TablesWorkflow`. Importing this module
is cheap: DuckDB, pyarrow and deltalake are imported inside ``execute()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_smart.compat import BaseOperator
from airflow_provider_smart.operators._lineage_tables import emit_table_events, tables_lineage

if TYPE_CHECKING:
    from airflow_provider_smart.compat import Context
    from airflow_provider_smart.tables.workflow import TablesWorkflow


class SmartViewsOperator(BaseOperator):
    """Run SQL on FHIR ViewDefinitions over a landed export and write one table per view.

    Tables go under ``destination``: ``delta/<view>`` (a Delta table) and ``parquet/<view>`` (versioned Parquet
    folders, ``_current.json`` naming the current one), and to ``duckdb_file`` if given. A full export
    replaces each table; an incremental one (``since``) replaces the rows of every resource it lists
    (all of a resource's rows at once) and removes those of the resources in its ``deleted`` files, each
    table in one transaction. Returns (XCom) a summary: ``tables`` (per view: ``resource``, ``schema``,
    ``outputs`` per format with ``location``, ``version``, ``rows``), ``transaction_time``, ``since``,
    ``deletions_not_reported`` (the export's server never fills ``deleted``: deleted resources keep their rows).

    To spread the work over workers, map a partial over ``share`` and finish with an unmapped task::

        convert = SmartViewsOperator.partial(task_id="convert", shares=4, **common).expand(share=[0, 1, 2, 3])
        commit = SmartViewsOperator(task_id="commit", shares=4, **common)
        convert >> commit

    Each mapped task converts its share of the files (the same split everywhere) into staged Parquet under
    ``destination``; the unmapped task converts any share left unstaged, then commits every table.

    :param export: the landed export: the export operator's return value (``export_task.output``), or the
        folder it landed in (a path or ``ObjectStoragePath`` URI; its ``manifest.json`` must be there).
    :param views: ViewDefinitions: a dict, a JSON file, a folder of JSON files, or a list of these.
        Files are rendered with Jinja before they are parsed. A table is named by the view's ``name``.
    :param destination: where the tables go, a local path or any ``ObjectStoragePath`` URI
        (``s3://conn@bucket/x``). Tables live on from run to run: do not template it per run.
    :param formats: any of ``"delta"`` and ``"parquet"``.
    :param duckdb_file: also write a DuckDB database file with a table per view (local path or URI).
    :param mode: ``"auto"``: incremental when the export has ``_since``, else full; ``"full"``: replace every
        table; ``"incremental"``: as auto, but refuse a full export.
    :param shares: how many shares the files are split into (the number of mapped tasks).
    :param share: this task's share (``0 .. shares-1``); None: the finishing, committing task.
    :param delta_storage_options: extra delta-rs storage options for an object store other than S3 (S3
        options come from the path's Airflow AWS connection). Put no secret here: it is part of the DAG.
    """

    template_fields: Sequence[str] = ("export", "views", "destination", "duckdb_file")
    ui_color = "#d5e8d4"

    def __init__(
        self,
        *,
        export: Any,
        views: Any,
        destination: str,
        formats: Sequence[str] = ("delta",),
        duckdb_file: str | None = None,
        mode: str = "auto",
        shares: int = 1,
        share: int | None = None,
        delta_storage_options: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.export = export
        self.views = views
        self.destination = destination
        self.formats = tuple(formats)
        self.duckdb_file = duckdb_file
        self.mode = mode
        self.shares = shares
        self.share = share
        self.delta_storage_options = delta_storage_options

    def workflow(self, context: Context) -> TablesWorkflow:
        from airflow_provider_smart.bulk.storage import as_destination
        from airflow_provider_smart.operators._destination import delta_storage_options, resolve_destination
        from airflow_provider_smart.tables.engine import collect_views
        from airflow_provider_smart.tables.landed import LandedExport
        from airflow_provider_smart.tables.workflow import TablesWorkflow

        def render(text: str) -> str:
            return str(self.render_template(text, context))

        def path(where: Any) -> Any:
            return as_destination(resolve_destination(where))

        output = path(self.destination)
        return TablesWorkflow(
            LandedExport.open(self.export, path),
            collect_views(self.views, render),
            output,
            formats=self.formats,
            duckdb_file=path(self.duckdb_file) if self.duckdb_file else None,
            shares=self.shares,
            mode=self.mode,
            storage_options=delta_storage_options(output, self.delta_storage_options)
            if "delta" in self.formats
            else None,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        workflow = self.workflow(context)
        if self.share is not None:
            return workflow.convert_share(int(self.share))
        summary = workflow.commit()
        emit_table_events(context, self.outlets, summary)
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        return tables_lineage(self)


def tables_in_duckdb(tables: Any, conn_id: str = "aws_default") -> tuple[Any, list[str]]:
    """A DuckDB connection with a view per table, and their names, from tables' asset event extras.

    Delta tables on an object store are opened with the storage credentials of the Airflow connection
    ``conn_id`` (as ``ObjectStoragePath`` would use them). For a consumer DAG::

        con, names = tables_in_duckdb(event.extra for events in triggering_asset_events.values() for event in events)
        con.sql("SELECT gender, count(*) FROM patient_demographics GROUP BY ALL").fetchall()
    """
    from airflow_provider_smart.operators._destination import delta_storage_options, resolve_destination
    from airflow_provider_smart.tables.reading import duckdb_over_tables

    def path(location: str) -> Any:
        scheme, rest = location.split("://", 1)
        return resolve_destination(f"{scheme}://{conn_id}@{rest}")

    def options(location: str) -> dict[str, str] | None:
        return delta_storage_options(path(location)) if "://" in location else None

    return duckdb_over_tables(tables, options, lambda location: path(location).fs)
