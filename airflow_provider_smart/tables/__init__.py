"""Landed Bulk Data exports into tables: SQL on FHIR views written as Delta, Parquet and DuckDB files.

Airflow-free (:class:`~airflow_provider_smart.operators.views.SmartViewsOperator` is the adapter); cheap to
import: DuckDB, pyarrow and deltalake load only when a run starts.

    export = LandedExport.open("/data/exports/run1")
    summary = TablesWorkflow(export, collect_views(str(BUNDLED_VIEWS)), Path("/data/tables")).commit()
"""

from __future__ import annotations

from pathlib import Path

# ViewDefinitions shipped with the package: patient_demographics, observation_flat, observation_codes,
# condition_flat (a folder: pass it as views=str(BUNDLED_VIEWS), or pick files from it).
BUNDLED_VIEWS = Path(__file__).resolve().parent / "view_definitions"

__all__ = ["BUNDLED_VIEWS"]
