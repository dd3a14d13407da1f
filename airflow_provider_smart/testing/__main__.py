"""``python -m airflow_provider_smart.testing``: run the sandbox server."""

import sys

from airflow_provider_smart.testing.cli import serve

sys.exit(serve())
