"""Child process: ``BulkExportClient.download(...)`` of a given manifest, measured from the inside.

Run as ``python benchmarks/child_download.py SPEC.json RESULT.json``. The parent measures the whole
process with ``os.wait4``; this script adds the figures of the ``download()`` call alone (wall time,
user/sys CPU of every thread, peak RSS before and after), so interpreter start-up and imports can be
told apart from the download itself.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def vm_hwm_kb() -> int | None:
    """This process's own peak RSS (``VmHWM``; Linux only), a cross-check of the parent's ``wait4`` figure."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main(spec_path: str, result_path: str) -> None:
    spec = json.loads(open(spec_path).read())  # noqa: SIM115 - the child stays tiny
    import requests

    from airflow_provider_smart.auth import BackendServicesAuth
    from airflow_provider_smart.bulk import BulkExportClient, DownloadOptions, ExportManifest

    session = requests.Session()
    auth = None
    if spec.get("token_url"):
        auth = BackendServicesAuth(
            client_id=spec["client_id"],
            private_key=open(spec["key_path"]).read(),  # noqa: SIM115
            kid=spec["kid"],
            fhir_base_url=spec["fhir_url"],
            token_url=spec["token_url"],
            scope=spec["scope"],
        )
        session.auth = auth
    else:
        # A static file server (nginx): the manifest says requiresAccessToken=false. Trust the run's CA;
        # with trust_env on, requests would let REQUESTS_CA_BUNDLE override session.verify.
        session.trust_env = False
        session.verify = spec.get("ca_path") or True
    client = BulkExportClient(session, spec["fhir_url"])
    manifest = ExportManifest.from_json(spec["manifest"], spec["status_url"])
    if auth is not None:
        auth.get_token()  # an operator holds a token from its kick-off and polls already

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    options = DownloadOptions(
        max_concurrent_downloads=spec["concurrency"], check_resource_types=spec["check_resource_types"]
    )
    report = client.download(manifest, spec["destination"], options)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "maxrss_kb_before": before.ru_maxrss,
        "maxrss_kb": after.ru_maxrss,
        "bytes": report.bytes,
        "lines": report.lines,
        "files": len(report.files),
        "token_requests": auth.token_requests if auth is not None else 0,
        "vm_hwm_kb": vm_hwm_kb(),
    }
    with open(result_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
