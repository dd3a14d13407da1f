"""Airflow provider for SMART on FHIR Backend Services auth and FHIR Bulk Data export."""

__version__ = "0.1.0"
