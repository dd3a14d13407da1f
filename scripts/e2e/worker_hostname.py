"""``[core] hostname_callable`` for the e2e Celery workers: both run on one machine, so each gets a name."""

from __future__ import annotations

import os
import socket


def get_hostname() -> str:
    return os.environ.get("E2E_WORKER_NAME") or socket.getfqdn()
