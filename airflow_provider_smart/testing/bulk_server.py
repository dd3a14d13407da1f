"""Bulk Data export jobs: kick-off, status polling and manifests, file serving, DELETE.

A kick-off snapshots the data state and starts a background thread that writes the job's NDJSON files
once (plus a gzip twin) into ``data_dir/<job>/``. Status polls answer 202 until both the configured
number of polls has happened and the files exist; then the manifest is built (consuming any pending
"malform"/"error file" test hooks) and served, possibly in pages.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import shutil
import threading
import time
import uuid
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from airflow_provider_smart.testing.auth_server import AccessToken, forbidden
from airflow_provider_smart.testing.common import (
    FHIR_JSON,
    FHIR_NDJSON,
    JSON,
    Request,
    Response,
    dumps,
    iso_ms,
    operation_outcome,
    outcome_response,
)
from airflow_provider_smart.testing.export_params import (
    ExportParams,
    KickoffError,
    parse_export_params,
    read_parameters,
    read_query,
)

if TYPE_CHECKING:
    from airflow_provider_smart.testing.sandbox import SmartSandbox

GROUPS = {"all": "every patient", "cohort-a": "even-numbered patients"}
_FLUSH_LINES = 2000
_READY_WAIT = 2.0  # seconds a ready-to-complete poll waits for file generation before answering 202
_SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}


@dataclass
class OutputFile:
    name: str
    type: str
    path: Path
    count: int
    gz_path: Path | None = None


@dataclass
class ExportJob:
    id: str
    level: str
    group_id: str | None
    params: ExportParams
    patients: list[int] | None
    request_url: str
    transaction_ms: int
    directory: Path
    polls_needed: int
    fail_diagnostics: str | None = None
    echo: str | None = None  # the caller's token, echoed back (SmartSandbox.echo_token_next_export)
    polls: int = 0
    pages_polled: set[int] = field(default_factory=set)
    files: dict[str, OutputFile] = field(default_factory=dict)
    outputs: list[OutputFile] = field(default_factory=list)
    deleted: list[OutputFile] = field(default_factory=list)
    generation_error: str | None = None
    progress: float = 0.0
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    pages: list[bytes] | None = None  # the serialized manifest pages, once complete
    client_id: str = ""
    cache_key: str | None = None  # identical requests share a job when the server reuses jobs (HAPI)


class _FileSeries:
    """Writes lines of one type into ``<stem>.1.ndjson``, ``<stem>.2.ndjson``... (+ ``.gz`` twins).

    The gzip twin is compressed on a helper thread (zlib releases the GIL), in order, while this
    thread keeps rendering lines.
    """

    def __init__(self, job: ExportJob, stem: str, rtype: str, per_file: int, gzip: bool) -> None:
        self.job, self.stem, self.rtype, self.per_file, self.gzip = job, stem, rtype, max(1, per_file), gzip
        self.files: list[OutputFile] = []
        self._buffer: list[str] = []
        self._count = 0
        self._plain: BinaryIO | None = None
        self._gz: BinaryIO | None = None
        self._compressor: Any = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"gzip-{job.id[:8]}") if gzip else None
        self._pending: list[Future[None]] = []

    def add(self, line: str) -> None:
        if self._plain is None:
            self._open()
        self._buffer.append(line)
        self._count += 1
        if self._count >= self.per_file:
            self._close_file()
        elif len(self._buffer) >= _FLUSH_LINES:
            self._flush()

    def close(self) -> list[OutputFile]:
        if self._plain is not None:
            self._close_file()
        self._shutdown()
        for future in self._pending:
            future.result()  # re-raise a compression error here
        return self.files

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _open(self) -> None:
        name = f"{self.stem}.{len(self.files) + 1}.ndjson"
        path = self.job.directory / name
        self._plain = path.open("wb")
        gz_path = None
        if self.gzip:
            gz_path = path.with_name(name + ".gz")
            self._gz = gz_path.open("wb")
            self._compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        self.files.append(OutputFile(name, self.rtype, path, 0, gz_path))
        self._count = 0

    def _flush(self) -> None:
        if self.job.cancelled:
            self._shutdown()
            raise _Cancelled
        data = "".join(self._buffer).encode()
        self._buffer.clear()
        assert self._plain is not None
        self._plain.write(data)
        if self._gz is not None and self._pool is not None:
            self._pending.append(self._pool.submit(_compress, self._gz, self._compressor, data, False))

    def _close_file(self) -> None:
        self._flush()
        assert self._plain is not None
        self._plain.close()
        if self._gz is not None and self._pool is not None:
            self._pending.append(self._pool.submit(_compress, self._gz, self._compressor, b"", True))
        self.files[-1].count = self._count
        self._plain = self._gz = None


def _compress(target: BinaryIO, compressor: Any, data: bytes, last: bool) -> None:
    target.write(compressor.compress(data))
    if last:
        target.write(compressor.flush())
        target.close()


class _Cancelled(Exception):
    pass


class BulkServer:
    def __init__(self, sandbox: SmartSandbox) -> None:
        self.sb = sandbox
        self.jobs: dict[str, ExportJob] = {}
        self._secret = uuid.uuid4().bytes
        self._lock = threading.Lock()

    # -- kick-off -------------------------------------------------------------------------------

    def kickoff(self, request: Request, level: str, group_id: str | None, token: AccessToken) -> Response:
        try:
            refusal = self._vendor_refusal(request, level, group_id, token)
            if refusal is not None:
                return refusal
            raw = self._read_params(request)
            key = json.dumps([token.client_id, level, group_id, sorted(raw.items())])
            cached = self._cached_job(request, key)
            if cached is not None:
                return cached
            return self._start_job(request, level, group_id, token, raw, key)
        except KickoffError as exc:
            return outcome_response(exc.status, exc.code, exc.diagnostics)

    def _read_params(self, request: Request) -> dict[str, list[str]]:
        quirks = self.sb.quirks
        if request.method == "POST":
            raw = read_query(request) if quirks.ignore_post_body else read_parameters(request)
            return quirks.drop_ignored(raw)
        read = quirks.query(request)
        if isinstance(read, str):
            raise KickoffError(400, "not-supported", read)
        return read

    def _vendor_refusal(
        self, request: Request, level: str, group_id: str | None, token: AccessToken
    ) -> Response | None:
        """What a vendor's server answers before reading the request (see ``VendorQuirks``)."""
        quirks = self.sb.quirks
        if quirks.required_header and not request.header(quirks.required_header):
            return outcome_response(400, "required", f"the {quirks.required_header} header is required")
        if quirks.forbidden_scopes & set(token.scope_text.split()):
            return outcome_response(403, "forbidden", "Forbidden")
        if quirks.single_slot:
            with self._lock:
                running = [j for j in self.jobs.values() if j.client_id == token.client_id]
            if running:
                return outcome_response(
                    429,
                    "throttled",
                    "Only one bulk export request for a client application and tenant combination may be "
                    "in-progress at a single time.",
                    headers={"Retry-After": "60"},
                )
        refusal = quirks.window_refusal(token.client_id, level, group_id)
        if refusal is not None:
            return outcome_response(400, "processing", refusal)
        return None

    def _cached_job(self, request: Request, key: str) -> Response | None:
        """HAPI: an identical request gets the existing job unless ``Cache-Control: no-cache``."""
        if not self.sb.quirks.reuse_jobs or "no-cache" in request.header("cache-control").lower():
            return None
        with self._lock:
            for job in self.jobs.values():
                if job.cache_key == key:
                    return Response(202, b"", {"Content-Location": f"{self.sb.url}/bulkstatus/{job.id}"})
        return None

    @staticmethod
    def params_of(request: Request) -> dict[str, list[str]]:
        """The kick-off parameters as sent (best effort: {} for an unreadable POST body)."""
        try:
            return read_parameters(request) if request.method == "POST" else read_query(request)
        except KickoffError:
            return {}

    def _start_job(
        self,
        request: Request,
        level: str,
        group_id: str | None,
        token: AccessToken,
        raw: dict[str, list[str]],
        cache_key: str | None = None,
    ) -> Response:
        sb = self.sb
        if request.header("accept") != FHIR_JSON:
            raise KickoffError(400, "invalid", "the kick-off Accept header must be exactly application/fhir+json")
        prefer = {p.strip().lower() for p in request.header("prefer").replace(";", ",").split(",")}
        if "respond-async" not in prefer:
            raise KickoffError(400, "invalid", "the kick-off requires the header Prefer: respond-async")
        if group_id is not None and group_id not in GROUPS:
            raise KickoffError(404, "not-found", f"Group/{group_id} does not exist")
        transaction_ms = sb._clock.tick()
        params = parse_export_params(
            raw,
            level=level,
            method=request.method,
            lenient="handling=lenient" in prefer,
            dataset=sb._dataset,
            now_ms=transaction_ms,
        )
        explicit = bool(raw.get("_type"))
        denied = [t for t in params.types if not token.allows(t, "rs")]
        if denied and (explicit or len(denied) == len(params.types)):
            return forbidden(f"the access token's scopes do not allow exporting {', '.join(denied)}")
        params.types = [t for t in params.types if t not in denied]
        patients = params.patients
        if group_id == "cohort-a":
            members = range(2, sb._dataset.patients + 1, 2)
            patients = [p for p in members if patients is None or p in patients]
        job_id = uuid.uuid4().hex
        directory = sb.data_dir / job_id
        directory.mkdir(parents=True)
        url = f"{sb.origin}{request.path}" + (f"?{request.query}" if request.query else "")
        echo = token.value if sb._take_pending("echo") else None
        fail = sb._take_pending("fail")
        if echo is not None:
            url += ("&" if "?" in url else "?") + f"access_token={echo}"
            fail = None if fail is None else f"{fail} (request had Authorization: Bearer {echo})"
        job = ExportJob(
            id=job_id,
            level=level,
            group_id=group_id,
            params=params,
            patients=patients,
            request_url=url,
            transaction_ms=transaction_ms,
            directory=directory,
            polls_needed=sb.status_polls_before_ready,
            fail_diagnostics=fail,
            echo=echo,
            client_id=token.client_id,
            cache_key=cache_key,
        )
        with self._lock:
            self.jobs[job_id] = job
        if job.fail_diagnostics is None:
            snapshot = sb._state_snapshot()
            threading.Thread(target=self._generate, args=(job, snapshot), daemon=True, name=job_id).start()
        else:
            job.done.set()
        status_url = f"{sb.url}/bulkstatus/{job_id}"
        outcome = operation_outcome("informational", f"export job {job_id} accepted", "information")
        return Response(202, dumps(outcome), {"Content-Type": FHIR_JSON, "Content-Location": status_url})

    # -- generation -----------------------------------------------------------------------------

    def _generate(self, job: ExportJob, snapshot: Any) -> None:
        sb, params = self.sb, job.params
        until = job.transaction_ms if params.until_ms is None else min(params.until_ms, job.transaction_ms)
        try:
            total = sum(sb._dataset.count(t) for t in params.types) or 1
            seen = 0
            for rtype in params.types:
                series = _FileSeries(job, rtype, rtype, sb.resources_per_file, sb.gzip)
                transform = self._transform(rtype, params)
                lines = sb._dataset.iter_lines(
                    rtype, snapshot, patients=job.patients, since_ms=params.since_ms, until_ms=until
                )
                for line in lines:
                    if transform is not None:
                        line = transform(line)
                        if line is None:
                            continue
                    series.add(line)
                job.outputs.extend(series.close())
                seen += sb._dataset.count(rtype)
                job.progress = seen / total
            if params.since_ms is not None and sb.quirks.report_deletions:
                series = _FileSeries(job, "deleted", "Bundle", sb.resources_per_file, sb.gzip)
                for line in self._deleted_lines(job, snapshot, params.since_ms, until):
                    series.add(line)
                job.deleted = series.close()
        except _Cancelled:
            pass
        except Exception as exc:
            job.generation_error = f"{type(exc).__name__}: {exc}"
        finally:
            job.progress = 1.0
            job.done.set()

    @staticmethod
    def _transform(rtype: str, params: ExportParams) -> Any:
        elements = params.elements_for(rtype)
        if not elements and rtype not in params.type_filters:
            return None

        def transform(line: str) -> str | None:
            resource = json.loads(line)
            if not params.keep(rtype, resource):
                return None
            if elements:
                keep = elements | {"resourceType", "id", "meta"}
                resource = {k: v for k, v in resource.items() if k in keep}
                resource.setdefault("meta", {}).setdefault("tag", []).append(_SUBSETTED)
            return json.dumps(resource, separators=(",", ":")) + "\n"

        return transform

    def _deleted_lines(self, job: ExportJob, snapshot: Any, since: int, until: int) -> list[str]:
        wanted = None if job.patients is None else set(job.patients)
        lines = []
        for rtype in job.params.types:
            for rid, when in sorted(snapshot.deleted.get(rtype, {}).items()):
                parsed = self.sb._dataset.parse_id(rtype, rid)
                if not (since < when <= until) or (wanted is not None and parsed and parsed[0] not in wanted):
                    continue
                bundle = {
                    "resourceType": "Bundle",
                    "id": f"deleted-{rid}",
                    "type": "transaction",
                    "entry": [{"request": {"method": "DELETE", "url": f"{rtype}/{rid}"}}],
                }
                lines.append(json.dumps(bundle, separators=(",", ":")) + "\n")
        return lines

    # -- status ---------------------------------------------------------------------------------

    def status(self, request: Request, job_id: str) -> Response:
        job = self.jobs.get(job_id)
        if job is None:
            return outcome_response(404, "not-found", f"unknown export job {job_id!r} (deleted or never existed)")
        page = self._page_number(request)
        if page is None:
            return outcome_response(400, "invalid", "page must be a positive integer")
        if page > 1:
            return self._serve_page(job, page)
        with job.lock:
            job.polls += 1
            early = job.polls <= job.polls_needed
        if early:
            pct = min(99, int(100 * job.polls / (job.polls_needed + 1)))
            return self._in_progress(f"{pct}% complete")
        if job.fail_diagnostics is not None:
            return outcome_response(500, "processing", job.fail_diagnostics)
        if not job.done.wait(_READY_WAIT):
            return self._in_progress(f"{min(99, int(100 * job.progress))}% complete, writing files")
        if job.generation_error is not None:
            return outcome_response(500, "exception", f"export failed: {job.generation_error}")
        with job.lock:
            if job.pages is None:
                self._complete(job)
        return self._serve_page(job, 1)

    @staticmethod
    def _page_number(request: Request) -> int | None:
        values = [v for k, v in request.query_params if k == "page"]
        if not values:
            return 1
        return int(values[0]) if values[0].isdigit() and int(values[0]) >= 1 else None

    def _in_progress(self, progress: str) -> Response:
        headers = {"X-Progress": progress}
        if self.sb.retry_after is not None:
            headers["Retry-After"] = str(self.sb.retry_after)
        return Response(202, b"", headers)

    def _serve_page(self, job: ExportJob, page: int) -> Response:
        if job.pages is None or page > len(job.pages):
            return outcome_response(404, "not-found", f"manifest page {page} does not exist")
        if page > 1 and self.sb.page_poll_202:
            with job.lock:
                first = page not in job.pages_polled
                job.pages_polled.add(page)
            if first:
                return self._in_progress("100% complete, preparing the next manifest page")
        expires = email.utils.formatdate(time.time() + 3600, usegmt=True)
        body = self._resign(job, job.pages[page - 1]) if self.sb.quirks.resign_urls else job.pages[page - 1]
        return Response(200, body, {"Content-Type": JSON, "Expires": expires})

    def _resign(self, job: ExportJob, page: bytes) -> bytes:
        """Every read of the manifest hands out freshly signed file URLs (Medplum, S3-backed servers)."""
        manifest = json.loads(page)
        expires = int(time.time()) + 3600
        for kind in ("output", "deleted", "error"):
            for entry in manifest.get(kind) or []:
                name = entry["url"].rsplit("/", 1)[-1]
                nonce = uuid.uuid4().hex[:8]
                signature = self._sign(job.id, f"{name}/{self.sb.sign_epoch}/{nonce}", expires)
                entry["url"] = f"{entry['url']}?Expires={expires}&Nonce={nonce}&Signature={signature}"
        return json.dumps(manifest, indent=1).encode()

    def signed_url_problem(self, request: Request, job_id: str, name: str) -> str | None:
        """Why a pre-signed file URL is refused (None: valid)."""
        query = dict(request.query_params)
        expires, nonce = query.get("Expires", ""), query.get("Nonce", "")
        if not expires.isdigit():
            return "Request is missing its signature"
        wanted = self._sign(job_id, f"{name}/{self.sb.sign_epoch}/{nonce}", int(expires))
        if not hmac.compare_digest(query.get("Signature", ""), wanted) or int(expires) < time.time():
            return "Request has expired"
        return None

    def _complete(self, job: ExportJob) -> None:
        """Build the manifest pages once; consumes pending test hooks; then applies churn."""
        sb = self.sb
        malform = sb._take_pending("malform")
        severity = sb._take_pending("error_file")
        messages = [("warning", "processing", w) for w in job.params.warnings]
        if job.echo is not None:
            messages.append(("error", "security", f"Observation/1 refused for Authorization: Bearer {job.echo}"))
        if severity is not None:
            messages += [
                (severity, "processing", "Observation/obs-0001-001 could not be exported (injected)"),
                (severity, "exception", "a secondary failure was injected for testing"),
            ]
        errors: list[OutputFile] = []
        if messages:
            series = _FileSeries(job, "errors", "OperationOutcome", sb.resources_per_file, sb.gzip)
            for severity_, code, text in messages:
                series.add(json.dumps(operation_outcome(code, text, severity_), separators=(",", ":")) + "\n")
            errors = series.close()
        for f in [*job.outputs, *job.deleted, *errors]:
            job.files[f.name] = f
        base = f"{sb.file_origin_url}/fhir/bulkfiles/{job.id}"

        def entries(files: list[OutputFile]) -> list[dict[str, Any]]:
            return [{"type": f.type, "url": f"{base}/{f.name}", "count": f.count} for f in files]

        output = entries(job.outputs)
        if malform == "bad_url":
            output.append({"type": "Observation", "url": "file:///etc/passwd", "count": 1})
        elif malform == "path_traversal":
            output.append({"type": "../../evil", "url": f"{base}/../../x", "count": 1})
        size = sb.manifest_page_size or max(1, len(output))
        chunks = [output[i : i + size] for i in range(0, len(output), size)] or [[]]
        status_url = f"{sb.url}/bulkstatus/{job.id}"
        pages: list[bytes] = []
        for number, chunk in enumerate(chunks, start=1):
            manifest: dict[str, Any] = {
                "transactionTime": iso_ms(job.transaction_ms, zulu=False),
                "request": job.request_url,
                "requiresAccessToken": sb.requires_access_token,
                "output": chunk,
                "error": entries(errors) if number == 1 else [],
            }
            if number == 1 and job.deleted:
                manifest["deleted"] = entries(job.deleted)
            if number < len(chunks):
                manifest["link"] = [{"relation": "next", "url": f"{status_url}?page={number + 1}"}]
            if malform == "no_output" and number == 1:
                del manifest["output"]
            body = json.dumps(manifest, indent=1).encode()
            if malform == "not_json" and number == 1:
                body = body[: len(body) // 2]
            pages.append(body)
        job.pages = pages
        if sb.churn_per_export:
            sb._churn(sb.churn_per_export)

    # -- delete ---------------------------------------------------------------------------------

    def delete(self, job_id: str) -> Response:
        with self._lock:
            job = self.jobs.pop(job_id, None)
        if job is None:
            return outcome_response(404, "not-found", f"unknown export job {job_id!r}; perhaps already deleted")
        self._discard(job)
        return outcome_response(202, "informational", f"export job {job_id} deleted", severity="information")

    @staticmethod
    def _discard(job: ExportJob) -> None:
        job.cancelled = True
        job.done.wait(30)
        shutil.rmtree(job.directory, ignore_errors=True)

    def finish_all(self) -> int:
        """Let every export still waiting for polls complete at its next poll; how many there were."""
        with self._lock:
            waiting = [job for job in self.jobs.values() if job.polls <= job.polls_needed]
            for job in waiting:
                job.polls_needed = 0
        return len(waiting)

    def discard_all(self) -> None:
        with self._lock:
            jobs = list(self.jobs.values())
            self.jobs.clear()
        for job in jobs:
            self._discard(job)

    # -- files ----------------------------------------------------------------------------------

    def _find(self, job_id: str, name: str) -> OutputFile | None:
        job = self.jobs.get(job_id)
        return job.files.get(name) if job is not None else None

    def file(self, request: Request, job_id: str, name: str) -> Response:
        found = self._find(job_id, name)
        if found is None:
            return outcome_response(404, "not-found", f"no such export file {name!r}")
        if self.sb.quirks.resign_urls and (problem := self.signed_url_problem(request, job_id, name)):
            return _s3_error(403, "AccessDenied", problem)
        if self.sb.redirect_files:
            expires = int(time.time()) + 600
            target = f"{self.sb.presigned_origin}/presigned/{job_id}/{name}"
            query = f"X-Amz-Expires=600&expires={expires}&sig={self._sign(job_id, name, expires)}"
            return Response(307, b"", {"Location": f"{target}?{query}"})
        return self._send_file(request, found, allow_gzip=self.sb.gzip)

    def presigned(self, request: Request, job_id: str, name: str) -> Response:
        if "authorization" in request.headers:
            return _s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
                "string parameter or the Authorization header should be specified",
            )
        query = dict(request.query_params)
        expires = query.get("expires", "")
        valid = expires.isdigit() and hmac.compare_digest(query.get("sig", ""), self._sign(job_id, name, int(expires)))
        if not valid:
            return _s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match")
        if int(expires) < time.time():
            return _s3_error(403, "AccessDenied", "Request has expired")
        found = self._find(job_id, name)
        if found is None:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return self._send_file(request, found, allow_gzip=False)

    def _sign(self, job_id: str, name: str, expires: int) -> str:
        return hmac.new(self._secret, f"{job_id}/{name}\n{expires}".encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def _send_file(request: Request, found: OutputFile, *, allow_gzip: bool) -> Response:
        headers = {"Content-Type": FHIR_NDJSON}
        path = found.path
        if allow_gzip:
            headers["Vary"] = "Accept-Encoding"
            if found.gz_path is not None and accepts_gzip(request.header("accept-encoding")):
                path = found.gz_path
                headers["Content-Encoding"] = "gzip"
        return Response(200, headers=headers, file=path, data_route=True)


def accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def _s3_error(status: int, code: str, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(status, body.encode(), {"Content-Type": "application/xml"})
