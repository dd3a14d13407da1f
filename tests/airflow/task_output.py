"""What a DAG run printed, for checking that no secret reached it."""

from __future__ import annotations

import re

# Airflow 3.0's in-process task supervisor (dag.test(), `airflow dags test`) logs at debug level every message
# between it and the task runner, values included: ``MaskSecret(value=<each secret handed to the masker>)``,
# ``SetXCom(value=...)``. Airflow prints those itself (3.1 no longer does; workers log at INFO). These lines
# are Airflow's, not ours: every other line is checked.
AIRFLOW_3_0_COMMS_ECHO = re.compile(r"\[debug\s*\] (Sending request|Received message from task runner)\b")


def checked_output(*texts: str) -> str:
    return "\n".join(line for text in texts for line in text.splitlines() if not AIRFLOW_3_0_COMMS_ECHO.search(line))
