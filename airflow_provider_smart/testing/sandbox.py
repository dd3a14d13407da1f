"""``SmartSandbox``: an offline SMART Backend Services + FHIR Bulk Data server for tests, demos, benchmarks.

Routing, request logs, test hooks and fault injection live here. The HTTP/1.1 layer is ``httpd``, the
token endpoint ``auth_server``, SMART App Launch (authorize, code and refresh grants) ``launch_server``,
export jobs ``bulk_server`` (parameters in ``export_params``) and the synthetic data ``data``.
"""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from airflow_provider_smart.testing.auth_server import DEFAULT_SIGNING_ALGS, AuthServer, forbidden, unauthorized
from airflow_provider_smart.testing.bulk_server import BulkServer
from airflow_provider_smart.testing.common import (
    FHIR_JSON,
    Clock,
    Request,
    Response,
    json_response,
    operation_outcome,
    outcome_response,
)
from airflow_provider_smart.testing.data import RESOURCE_TYPES, Dataset, DataState
from airflow_provider_smart.testing.faults import Fault, FaultBoard
from airflow_provider_smart.testing.httpd import SandboxHTTPServer
from airflow_provider_smart.testing.launch_server import SMART_STYLE, LaunchServer
from airflow_provider_smart.testing.metadata import (
    LaunchEndpoints,
    capability_statement,
    search_bundle,
    smart_configuration,
)
from airflow_provider_smart.testing.vendor_quirks import VENDOR_QUIRKS, VendorQuirks

_GROUP_EXPORT = re.compile(r"/fhir/Group/([^/]+)/\$export")
_PATIENT_READ = re.compile(r"/fhir/Patient/([^/$]+)")
_STATUS = re.compile(r"/fhir/bulkstatus/([^/]+)")
_FILE = re.compile(r"/fhir/bulkfiles/([^/]+)/([^/]+)")
_PRESIGNED = re.compile(r"/presigned/([^/]+)/([^/]+)")
_KICKOFF_PATHS = {"/fhir/$export": "system", "/fhir/Patient/$export": "patient"}


class SmartSandbox:
    """A real SMART/Bulk Data peer on ``127.0.0.1`` and an ephemeral port. Use as a context manager."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_lifetime: int = 300,
        patients: int = 20,
        resources_per_patient: int = 5,
        resources_per_file: int = 1000,
        status_polls_before_ready: int = 1,
        retry_after: str | int | None = "1",
        requires_access_token: bool = True,
        gzip: bool = True,
        well_known: bool = True,
        signing_algs: list[str] | tuple[str, ...] = DEFAULT_SIGNING_ALGS,
        manifest_page_size: int | None = None,
        page_poll_202: bool = False,
        file_origin: str | None = None,
        redirect_files: bool = False,
        churn_per_export: int = 0,
        data_dir: str | Path | None = None,
        app_launch: bool | None = None,
        quirks: VendorQuirks | str | None = None,
    ) -> None:
        """``app_launch``: advertise App Launch in discovery and accept its grants; ``None`` (default) does so
        once a client with ``redirect_uris`` is registered, so a Backend Services sandbox looks backend-only.
        ``quirks``: behave as a vendor is documented to (a :class:`VendorQuirks` or a preset's name)."""
        self.host, self._requested_port = host, port
        self.quirks = VENDOR_QUIRKS[quirks].copy() if isinstance(quirks, str) else (quirks or VendorQuirks())
        self.sign_epoch = 0  # bumped by expire_signed_urls(): every pre-signed URL issued so far fails
        self.resources_per_file = resources_per_file
        self.status_polls_before_ready = status_polls_before_ready
        self.retry_after = retry_after
        self.requires_access_token = requires_access_token
        self.gzip = gzip
        self.well_known = well_known
        self.manifest_page_size = manifest_page_size
        self.page_poll_202 = page_poll_202
        self.file_origin = file_origin
        self.redirect_files = redirect_files
        self.churn_per_export = churn_per_export
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._dataset = Dataset(patients, resources_per_patient)
        self._state = DataState()
        self._clock = Clock()
        self._auth = AuthServer(lambda: self.token_url, token_lifetime=token_lifetime, signing_algs=signing_algs)
        self._launch = LaunchServer(
            self._auth, fhir_url=lambda: self.url, origin=lambda: self.origin, app_launch=app_launch
        )
        self._bulk = BulkServer(self)
        self._faults = FaultBoard()
        self._pending: dict[str, Any] = {}
        self._touch_cursor: dict[str, int] = {}
        self._churn_count = 0
        self._lock = threading.Lock()
        self._server: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.requests_log: list[dict[str, Any]] = []
        self.kickoffs: list[dict[str, Any]] = []
        self._status_polls = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> SmartSandbox:
        if self._server is not None:
            return self
        if self._data_dir_arg is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="smart-sandbox-")
        else:
            self._data_dir_arg.mkdir(parents=True, exist_ok=True)
        server = SandboxHTTPServer((self.host, self._requested_port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="smart-sandbox"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(5)
        self._bulk.discard_all()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __enter__(self) -> SmartSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() or use it as a context manager")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/auth/token"

    @property
    def authorize_url(self) -> str:
        return f"{self.origin}/auth/authorize"

    @property
    def jwks_url(self) -> str:
        """The sandbox's own JWK Set (the ``id_token`` signing key)."""
        return f"{self.origin}/auth/jwks"

    @property
    def file_origin_url(self) -> str:
        if not self.file_origin:
            return self.origin
        if "://" in self.file_origin:
            return self.file_origin.rstrip("/")
        return f"http://{self.file_origin}:{self.port}"

    @property
    def presigned_origin(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def data_dir(self) -> Path:
        if self._tempdir is not None:
            return Path(self._tempdir.name)
        if self._data_dir_arg is None:
            raise RuntimeError("the sandbox is not running")
        return self._data_dir_arg

    # -- clients and tokens ---------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        *,
        jwks: dict[str, Any] | None = None,
        client_secret: str | None = None,
        scopes: str = "system/*.rs system/*.read",
        redirect_uris: list[str] | None = None,
        public: bool = False,
    ) -> None:
        """Register an asymmetric (``jwks``: public JWK Set) and/or symmetric (``client_secret``) client, or a
        ``public`` one (neither; it sends ``client_id`` only). ``redirect_uris`` enable App Launch for it;
        ``scopes`` may then hold ``patient/``/``user/`` scopes and ``launch``, ``openid``, ``offline_access``..."""
        self._auth.register_client(
            client_id,
            jwks=jwks,
            client_secret=client_secret,
            scopes=scopes,
            redirect_uris=redirect_uris,
            public=public,
        )

    def launch_refresh_token(self, client_id: str, scope: str = "openid fhirUser offline_access user/*.rs") -> str:
        """Register ``client_id`` as a public App Launch client and run a standalone launch with PKCE
        through the library's loopback flow (the sandbox approves at once): the refresh token it grants."""
        import socket

        import requests

        from airflow_provider_smart.auth.discovery import discover_smart_configuration
        from airflow_provider_smart.auth.loopback import authorize_with_loopback

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            redirect = f"http://127.0.0.1:{probe.getsockname()[1]}/callback"
        self.register_client(client_id, public=True, scopes=scope, redirect_uris=[redirect])

        def browser(url: str) -> None:  # a person's browser, following the sandbox's redirect
            threading.Thread(target=requests.get, args=(url,), kwargs={"timeout": 30}, daemon=True).start()

        token = authorize_with_loopback(
            smart_config=discover_smart_configuration(self.url),
            client_id=client_id,
            scope=scope,
            open_url=browser,
            redirect_uri=redirect,
            timeout=60,
        )
        if not token.refresh_token:
            raise RuntimeError(f"the sandbox granted no refresh token for scope {scope!r}")
        return str(token.refresh_token)

    @property
    def token_requests(self) -> int:
        return self._auth.token_requests

    @property
    def token_log(self) -> list[dict[str, Any]]:
        return self._auth.token_log

    @property
    def token_response_patch(self) -> dict[str, Any] | None:
        return self._auth.response_patch

    @token_response_patch.setter
    def token_response_patch(self, patch: dict[str, Any] | None) -> None:
        self._auth.response_patch = patch

    @property
    def token_lifetime(self) -> int:
        return self._auth.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self._auth.token_lifetime = seconds

    def issued_tokens(self) -> list[str]:
        """Every access token value issued so far, oldest first (to check that none leaks into logs)."""
        with self._auth._lock:
            return list(self._auth.tokens)

    def expire_tokens(self) -> None:
        """Invalidate every access token issued so far (the next use answers 401)."""
        self._auth.expire_all()

    @property
    def status_polls(self) -> int:
        return self._status_polls

    def reset_logs(self) -> None:
        with self._lock:
            self.requests_log.clear()
            self.kickoffs.clear()
            self._status_polls = 0
        self._auth.reset_logs()
        self._launch.reset_logs()

    # -- App Launch (authorization code + PKCE, refresh tokens) ---------------------------------

    @property
    def app_launch(self) -> bool:
        """Whether App Launch is advertised and its grants accepted (see ``__init__``); settable."""
        return self._launch.enabled

    @app_launch.setter
    def app_launch(self, value: bool | None) -> None:
        self._launch.app_launch = value

    @property
    def launch_context(self) -> dict[str, Any]:
        """Context of new launches: patient, encounter, fhirUser, need_patient_banner, smart_style_url, tenant."""
        return self._launch.launch_context

    @launch_context.setter
    def launch_context(self, context: dict[str, Any]) -> None:
        self._launch.launch_context = context

    @property
    def rotate_refresh_tokens(self) -> bool:
        return self._launch.rotate_refresh_tokens

    @rotate_refresh_tokens.setter
    def rotate_refresh_tokens(self, value: bool) -> None:
        self._launch.rotate_refresh_tokens = value

    @property
    def refresh_token_lifetime(self) -> int:
        return self._launch.refresh_token_lifetime

    @refresh_token_lifetime.setter
    def refresh_token_lifetime(self, seconds: int) -> None:
        self._launch.refresh_token_lifetime = seconds

    def create_ehr_launch(self, patient: str | None = None, encounter: str | None = None) -> str:
        """A launch id for an EHR launch; ``None`` takes the patient/encounter of ``launch_context``."""
        return self._launch.create_ehr_launch(patient, encounter)

    @property
    def refresh_requests(self) -> int:
        return self._launch.refresh_requests

    @property
    def authorize_log(self) -> list[dict[str, Any]]:
        return self._launch.authorize_log

    def revoke_refresh_tokens(self) -> None:
        """Invalidate every refresh token issued so far (the next refresh answers invalid_grant)."""
        self._launch.revoke_refresh_tokens()

    # -- data mutations -------------------------------------------------------------------------

    def touch(self, resource_type: str, n: int) -> list[str]:
        """Mark the next ``n`` (cycling) live resources of a type as updated now; returns their ids."""
        if resource_type not in RESOURCE_TYPES:
            raise ValueError(f"unknown resource type {resource_type!r}")
        ids = [rid for _, _, rid in self._dataset.ids(resource_type)]
        touched: list[str] = []
        with self._lock:
            deleted = self._state.deleted.get(resource_type, {})
            live = [rid for rid in ids if rid not in deleted]
            updated = self._state.updated.setdefault(resource_type, {})
            cursor = self._touch_cursor.get(resource_type, 0)
            for _ in range(min(n, len(live))):
                rid = live[cursor % len(live)]
                cursor += 1
                version = updated.get(rid, (0, 1))[1] + 1
                updated[rid] = (self._clock.tick(), version)
                touched.append(rid)
            self._touch_cursor[resource_type] = cursor
        return touched

    def delete_resource(self, resource_type: str, id: str) -> None:
        """Delete a resource now: it leaves every export and shows up in ``deleted`` after ``_since``."""
        if resource_type not in RESOURCE_TYPES or self._dataset.parse_id(resource_type, id) is None:
            raise KeyError(f"{resource_type}/{id} does not exist")
        with self._lock:
            self._state.deleted.setdefault(resource_type, {}).setdefault(id, self._clock.tick())

    def _churn(self, n: int) -> None:
        self.touch("Observation", n)
        with self._lock:
            self._churn_count += 1
            count = self._churn_count
        per = self._dataset.per_patient_counts["Observation"]
        if not self._dataset.patients or not per:
            return
        p = (count - 1) % self._dataset.patients + 1
        with self._lock:
            deleted = dict(self._state.deleted.get("Observation", {}))
        for j in range(per, 0, -1):
            rid = self._dataset.resource_id("Observation", p, j)
            if rid not in deleted:
                self.delete_resource("Observation", rid)
                return

    def _state_snapshot(self) -> DataState:
        with self._lock:
            return self._state.snapshot()

    # -- fault injection and test hooks ---------------------------------------------------------

    def add_fault(
        self,
        route: str,
        *,
        status: int | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
        after_bytes: int | None = None,
        delay: float | None = None,
        path_contains: str | None = None,
    ) -> None:
        """The next ``times`` requests on ``route`` answer ``status``/``body``/``headers`` instead.

        ``path_contains`` limits the fault to requests whose path contains it (say, one file's name).

        ``route="file", after_bytes=N`` (no status): send the real headers, N body bytes, then hang up.
        ``delay`` sleeps that many seconds first (alone: a slow but normal answer).
        """
        self._faults.add(Fault(route, status, body, headers, times, after_bytes, delay, path_contains))

    def clear_faults(self) -> None:
        self._faults.clear()

    def finish_exports(self) -> int:
        """Complete, at their next poll, the exports still waiting out ``status_polls_before_ready``
        (kicked off while it was set high, to keep them waiting); returns how many."""
        return self._bulk.finish_all()

    @staticmethod
    def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict[str, Any]:
        return operation_outcome(code, diagnostics, severity)

    def fail_next_export(self, diagnostics: str = "The export failed (injected by the sandbox)") -> None:
        """The next kicked-off job fails: after its 202 polls its status answers 500 (code processing)."""
        self._set_pending("fail", diagnostics)

    def echo_token_next_export(self) -> None:
        """The next kicked-off job echoes the caller's access token back, as careless servers do: in the
        manifest's ``request`` URL, its type names, an ``error`` file's diagnostics, and its failure
        message if :meth:`fail_next_export` was also called."""
        self._set_pending("echo", True)

    def malform_next_manifest(self, kind: str = "not_json") -> None:
        """The next manifest built is broken: not_json | no_output | bad_url | path_traversal."""
        if kind not in ("not_json", "no_output", "bad_url", "path_traversal"):
            raise ValueError(f"unknown manifest malformation {kind!r}")
        self._set_pending("malform", kind)

    def expire_signed_urls(self) -> None:
        """Every pre-signed file URL issued so far answers 403, as an expired S3 link does (``resign_urls``)."""
        with self._lock:
            self.sign_epoch += 1

    def add_error_file(self, severity: str = "error") -> None:
        """The next manifest's ``error`` array lists an NDJSON file of OperationOutcomes of ``severity``."""
        if severity not in ("fatal", "error", "warning", "information"):
            raise ValueError(f"unknown severity {severity!r}")
        self._set_pending("error_file", severity)

    def _set_pending(self, key: str, value: Any) -> None:
        with self._lock:
            self._pending[key] = value

    def _take_pending(self, key: str) -> Any:
        with self._lock:
            return self._pending.pop(key, None)

    def _record_kickoff(self, request: Request, response: Response) -> None:
        if match := _GROUP_EXPORT.fullmatch(request.path):
            level, group_id = "group", match.group(1)
        else:
            level, group_id = _KICKOFF_PATHS[request.path], None
        location = response.headers.get("Content-Location", "") if response.status == 202 else ""
        record = {
            "level": level,
            "group_id": group_id,
            "method": request.method,
            "params": self._bulk.params_of(request),
            "headers": dict(request.headers),
            "status": response.status,
            "job_id": location.rsplit("/", 1)[-1] or None,
        }
        with self._lock:
            self.kickoffs.append(record)

    # -- routing --------------------------------------------------------------------------------

    def _dispatch(self, request: Request) -> tuple[str, Response]:
        route, response = self._answer(request)
        if route == "kickoff":
            self._record_kickoff(request, response)
        return route, response

    def _answer(self, request: Request) -> tuple[str, Response]:
        route, methods, handler = self._resolve(request.path, request.method)
        if route == "status" and request.method == "GET":
            with self._lock:
                self._status_polls += 1
        if handler is None:
            return route, outcome_response(404, "not-found", f"no route for {request.path}")
        if request.method not in methods:
            allow = ", ".join(sorted(methods))
            return route, outcome_response(
                405, "not-supported", f"{request.method} is not allowed here", headers={"Allow": allow}
            )
        fault = self._faults.take(route, request.path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                if route == "token":
                    self._auth.log_fault(fault.status)
                return route, fault.response()
        return route, handler(request)

    def _resolve(self, path: str, method: str) -> tuple[str, set[str], Any]:
        if path == "/auth/token":
            return "token", {"POST"}, self._auth.handle_token
        if path == "/auth/authorize":
            return "authorize", {"GET", "POST"}, self._launch.handle_authorize
        if path == "/auth/jwks":
            return "jwks", {"GET"}, lambda r: json_response(200, self._launch.signer.jwks())
        if path == "/smart-style.json":
            return "style", {"GET"}, lambda r: json_response(200, SMART_STYLE)
        if path == "/fhir/.well-known/smart-configuration":
            return "discovery", {"GET"}, self._discovery
        if path == "/fhir/metadata":
            return "metadata", {"GET"}, self._metadata
        if path in _KICKOFF_PATHS:
            level = _KICKOFF_PATHS[path]
            return "kickoff", {"GET", "POST"}, lambda r: self._kickoff(r, level, None)
        if match := _GROUP_EXPORT.fullmatch(path):
            group = match.group(1)
            return "kickoff", {"GET", "POST"}, lambda r: self._kickoff(r, "group", group)
        if path == "/fhir/Patient" or _PATIENT_READ.fullmatch(path):
            return "patient", {"GET"}, self._patients
        if match := _STATUS.fullmatch(path):
            job = match.group(1)
            if method == "DELETE":
                return "delete", {"DELETE"}, self._authorized(lambda r: self._bulk.delete(job))
            return "status", {"GET", "DELETE"}, self._authorized(lambda r: self._bulk.status(r, job))
        if match := _FILE.fullmatch(path):
            job, name = match.groups()
            return "file", {"GET"}, lambda r: self._file(r, job, name)
        if match := _PRESIGNED.fullmatch(path):
            job, name = match.groups()
            return "file", {"GET"}, lambda r: self._bulk.presigned(r, job, name)
        return "other", set(), None

    def _authorized(self, handler: Any) -> Any:
        def wrapped(request: Request) -> Response:
            if self._auth.check_bearer(request) is None:
                return unauthorized(self._bearer_problem(request))
            return handler(request)

        return wrapped

    def _file(self, request: Request, job_id: str, name: str) -> Response:
        if self.requires_access_token:
            token = self._auth.check_bearer(request)
            if token is None:
                return unauthorized(self._bearer_problem(request))
            rtype = name.split(".", 1)[0]
            if rtype in RESOURCE_TYPES and not token.allows(rtype, "r"):
                return forbidden(f"the access token's scopes do not allow reading {rtype}")
        return self._bulk.file(request, job_id, name)

    def _bearer_problem(self, request: Request) -> str:
        if not request.header("authorization"):
            return "an access token is required (Authorization: Bearer ...)"
        return "the access token is invalid or expired"

    def _discovery(self, request: Request) -> Response:
        if not self.well_known:
            return outcome_response(404, "not-found", "this server does not publish .well-known/smart-configuration")
        launch = self._launch_endpoints()
        return json_response(200, smart_configuration(self.token_url, self._auth.signing_algs, launch))

    def _metadata(self, request: Request) -> Response:
        statement = capability_statement(self.url, self.token_url, self._launch_endpoints())
        statement["software"] = {"name": self.quirks.software_name}
        statement["publisher"] = self.quirks.publisher
        return json_response(200, statement, content_type=FHIR_JSON)

    def _launch_endpoints(self) -> LaunchEndpoints | None:
        if not self._launch.enabled:
            return None
        return LaunchEndpoints(authorize=self.authorize_url, jwks=self.jwks_url, issuer=self.url)

    def _kickoff(self, request: Request, level: str, group_id: str | None) -> Response:
        token = self._auth.check_bearer(request)
        if token is None:
            return unauthorized(self._bearer_problem(request))
        return self._bulk.kickoff(request, level, group_id, token)

    def _patients(self, request: Request) -> Response:
        token = self._auth.check_bearer(request)
        if token is None:
            return unauthorized(self._bearer_problem(request))
        state = self._state_snapshot()
        if request.path != "/fhir/Patient":
            if not token.allows("Patient", "r"):
                return forbidden("the access token's scopes do not allow reading Patient")
            line = self._dataset.resource("Patient", request.path.rsplit("/", 1)[1], state)
            if line is None:
                return outcome_response(404, "not-found", f"{request.path[6:]} does not exist")
            return Response(200, line.strip().encode(), {"Content-Type": FHIR_JSON})
        if not token.allows("Patient", "s"):
            return forbidden("the access token's scopes do not allow searching Patient")
        query = dict(request.query_params)
        try:
            count = max(0, int(query.get("_count", "50")))
            offset = max(0, int(query.get("_offset", "0")))
        except ValueError:
            return outcome_response(400, "invalid", "_count and _offset must be integers")
        lines = list(self._dataset.iter_lines("Patient", state))
        return json_response(200, search_bundle(self.url, lines, count, offset), content_type=FHIR_JSON)

    def _log_request(self, request: Request, route: str, status: int) -> None:
        entry = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "route": route,
            "status": status,
            "authorization": "authorization" in request.headers,
            "headers": dict(request.headers),
        }
        with self._lock:
            self.requests_log.append(entry)
