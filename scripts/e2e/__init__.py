"""Helpers of ``scripts/e2e.py``: processes, services, the Airflow REST API, and the checks."""
