"""Figure 5: what importing the operator module adds on top of ``import airflow.sdk``.

Each probe is a fresh interpreter that times, in order: ``import airflow.sdk``; the Airflow names the
module itself imports at top level (``airflow.providers.common.compat.sdk``: BaseOperator, BaseHook,
conf, AirflowException), which any operator module pays; then the module. It also records which heavy
modules the module newly loads.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

from harness import PY, REPO, airflow_env, log, median

MODULE = "airflow_provider_smart.operators.bulk_export"
HEAVY = (
    "requests",
    "urllib3",
    "jwt",
    "cryptography",
    "airflow_provider_smart.bulk.client",
    "airflow_provider_smart.bulk.download",
    "airflow_provider_smart.auth.backend",
)
_MARK = "#-- our module starts here --#"

PROBE = f"""
import json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
before = set(sys.modules)
from airflow.providers.common.compat.sdk import AirflowException, BaseHook, BaseOperator, conf
t2 = time.perf_counter()
mid = set(sys.modules)
sys.stderr.write({_MARK!r} + "\\n")
sys.stderr.flush()
import {MODULE}
t3 = time.perf_counter()
heavy = {{}}
for name in {HEAVY!r}:
    if name in before:
        heavy[name] = "already loaded by airflow.sdk"
    elif name in mid:
        heavy[name] = "loaded by airflow's compat layer"
    elif name in sys.modules:
        heavy[name] = "NEWLY IMPORTED by the module"
    else:
        heavy[name] = "not imported"
print(json.dumps({{
    "sdk_ms": (t1 - t0) * 1000, "compat_ms": (t2 - t1) * 1000, "own_ms": (t3 - t2) * 1000,
    "modules_before": len(before), "new_compat": len(mid - before), "new_own": sorted(set(sys.modules) - mid),
    "heavy": heavy,
}}))
"""


def _probe(importtime: bool = False) -> tuple[dict[str, Any], str]:
    argv = [PY, *(["-X", "importtime"] if importtime else []), "-c", PROBE]
    done = subprocess.run(argv, capture_output=True, text=True, env=airflow_env(), cwd=REPO, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"the import probe failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _slowest_after_mark(stderr: str, top: int) -> list[dict[str, Any]]:
    """The modules imported after the mark (i.e. by our module), slowest self time first."""
    rows = []
    seen = False
    for line in stderr.splitlines():
        if line.strip() == _MARK:
            seen = True
            continue
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if seen and match:
            self_us, cum_us, _indent, name = match.groups()
            rows.append({"module": name, "self_ms": int(self_us) / 1000, "cumulative_ms": int(cum_us) / 1000})
    return sorted(rows, key=lambda r: -r["self_ms"])[:top]


def run_import_figure(runs: int, importtime: bool) -> dict[str, Any]:
    log(f"import time: 1 warm-up + {runs} fresh interpreters (each imports airflow.sdk)...")
    _probe()  # warm-up: .pyc files, disk cache
    samples = []
    for i in range(runs):
        sample, _ = _probe()
        samples.append(sample)
        log(f"  run {i + 1}: airflow.sdk {sample['sdk_ms']:.0f} ms, +compat {sample['compat_ms']:.1f} ms, "
            f"+module {sample['own_ms']:.1f} ms")  # fmt: skip
    sdk = median(s["sdk_ms"] for s in samples)
    compat = median(s["compat_ms"] for s in samples)
    own = median(s["own_ms"] for s in samples)
    total = median(s["compat_ms"] + s["own_ms"] for s in samples)
    slowest = _slowest_after_mark(_probe(importtime=True)[1], 8) if importtime else []
    heavy = samples[-1]["heavy"]
    return {
        "runs": runs,
        "sdk_ms": sdk,
        "compat_ms": compat,
        "own_ms": own,
        "increment_ms": total,
        "ratio": total / sdk,
        "new_modules_own": samples[-1]["new_own"],
        "heavy": heavy,
        "slowest": slowest,
        "samples": samples,
        "ok": all(v != "NEWLY IMPORTED by the module" for v in heavy.values()),
    }
