"""``doctor``: everything about one connection and its server that decides whether exports will work.

Each check answers ``ok``, ``warn``, ``fail`` or ``skip`` with one sentence, so ``airflow-smart doctor``
prints a report and the connection form's Test button shows its short form:

* ``discovery``: the SMART configuration (token endpoint, where it came from, capabilities);
* ``clock``: our clock against the server's ``Date`` header (assertions live at most 5 minutes);
* ``token``: a real token, the scopes granted against those requested, and its lifetime;
* ``bulk export``: the ``$export`` operations the CapabilityStatement declares at system, Patient and
  Group level;
* ``vendor``: the vendor profile detected from ``/metadata`` and the SMART configuration (or named in
  the connection);
* ``tls``: the days left on the server's certificate;
* ``jku``: whether the JWK Set URL the assertions name can be fetched, with our kid in it.

Never prints a secret: tokens, keys and client secrets stay out of every message. Airflow-free.
"""

from __future__ import annotations

import email.utils
import importlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from airflow_provider_smart.connection import ConnectionSettings, build_auth, normalise_extra

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
SKEW_WARN = 30.0  # seconds: servers allow some leeway on exp/iat, not much
SKEW_FAIL = 240.0  # an assertion lives at most 300 s: beyond this, servers refuse it as expired or not yet valid
SHORT_LIFETIME = 60.0  # tokens shorter than this are renewed almost constantly
CERT_WARN_DAYS = 30


@dataclass
class Check:
    name: str
    status: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    short: str = ""  # a few words for the Test button; empty: the summary is too long to show there


@dataclass
class DoctorReport:
    fhir_base_url: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    def render(self) -> str:
        lines = [f"Server {self.fhir_base_url}"]
        width = max(len(c.name) for c in self.checks) if self.checks else 0
        for check in self.checks:
            lines.append(f"  {check.status.upper():<5} {check.name:<{width}}  {check.summary}")
        lines.append(f"{len(self.failed)} failed, {len(self.warnings)} warning(s), {len(self.checks)} checks.")
        return "\n".join(lines)

    def short(self) -> str:
        """One sentence for the Test button: what failed or warned in full, the rest in a few words."""
        parts = []
        for check in self.checks:
            if check.status in (FAIL, WARN):
                parts.append(f"{check.name}: {check.summary}")
            elif check.short:
                parts.append(check.short)
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fhir_base_url": self.fhir_base_url,
            "checks": [{"name": c.name, "status": c.status, "summary": c.summary, **c.details} for c in self.checks],
        }


class Doctor:
    """Run the checks of one connection (``settings``; ``extra`` for the named vendor profile).

    ``token`` checks get a real token unless ``mint_token=False`` (the Test button mints its own first) or
    the connection is a refresh-token one (a refresh would rotate the user's token).
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        extra: dict[str, Any] | None = None,
        scope: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.extra = normalise_extra(extra)
        self.scope = scope
        self.clock = clock
        self.session = requests.Session()
        self.session.verify = settings.verify
        self.session.headers.update(settings.headers)
        self.smart_config: Any = None
        self.capability: dict[str, Any] | None = None

    def run(self, *, mint_token: bool = True) -> DoctorReport:
        report = DoctorReport(self.settings.fhir_base_url)
        steps: list[Callable[[], Check]] = [self.discovery, self.clock_skew]
        if mint_token:
            steps.append(self.token)
        steps += [self.bulk_export, self.vendor, self.tls, self.jku]
        for step in steps:
            try:
                report.checks.append(step())
            except Exception as exc:  # a check that breaks is a failed check, never a crashed report
                name = step.__name__.replace("_", " ")
                report.checks.append(Check(name, FAIL, _describe(exc)))
        return report

    # -- the checks ---------------------------------------------------------------------------------
    def discovery(self) -> Check:
        from airflow_provider_smart.auth.discovery import discover_smart_configuration

        if self.settings.token_url:
            return Check("discovery", SKIP, f"not needed: the connection sets the token URL {self.settings.token_url}")
        config = discover_smart_configuration(
            self.settings.fhir_base_url,
            session=self.session,
            timeout=self.settings.timeout,
            allow_insecure_http=self.settings.allow_insecure_http,
        )
        self.smart_config = config
        where = ".well-known/smart-configuration" if config.source == "well-known" else "the CapabilityStatement"
        capabilities = ", ".join(config.capabilities) or "none listed"
        algs = ", ".join(config.token_endpoint_auth_signing_alg_values_supported) or "not listed"
        summary = (
            f"token endpoint {config.token_endpoint} (from {where}); signing algs {algs}; capabilities {capabilities}"
        )
        details = {
            "token_endpoint": config.token_endpoint,
            "source": config.source,
            "capabilities": config.capabilities,
        }
        status = OK
        asymmetric = "client-confidential-asymmetric" in config.capabilities
        if self.settings.auth_method == "private_key_jwt" and config.capabilities and not asymmetric:
            status = WARN
            summary += "; it does not list client-confidential-asymmetric (private_key_jwt)"
        return Check("discovery", status, summary, details, short="discovery ok")

    def _metadata(self) -> tuple[dict[str, Any] | None, requests.Response | None, float]:
        url = f"{self.settings.fhir_base_url}/metadata"
        before = self.clock()
        response = self.session.get(url, headers={"Accept": "application/fhir+json"}, timeout=self.settings.timeout)
        midpoint = (before + self.clock()) / 2
        data = None
        if response.status_code == 200:
            try:
                data = response.json()
            except ValueError:
                data = None
        self.capability = data if isinstance(data, dict) else None
        return self.capability, response, midpoint

    def clock_skew(self) -> Check:
        _, response, ours = self._metadata()
        date = response.headers.get("Date") if response is not None else None
        if not date:
            return Check("clock", WARN, "the server sent no Date header: skew unknown")
        try:
            theirs = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return Check("clock", WARN, f"the server's Date header {date[:60]!r} is not an HTTP date: skew unknown")
        skew = theirs - ours
        direction = "ahead of" if skew > 0 else "behind"
        if abs(skew) < 1.5:  # Date has 1 s resolution
            summary = "the server's clock agrees with ours (within the 1 s of its Date header)"
        else:
            summary = f"the server's clock is {abs(skew):.0f} s {direction} ours"
        details = {"skew_seconds": round(skew, 1)}
        if abs(skew) > SKEW_FAIL:
            return Check(
                "clock", FAIL, summary + ": assertions will be refused; sync this machine's clock (NTP)", details
            )
        if abs(skew) > SKEW_WARN:
            return Check("clock", WARN, summary + ": check NTP on this machine", details)
        return Check("clock", OK, summary, details, short=f"clock skew {abs(skew):.0f} s")

    def token(self) -> Check:
        settings = self.settings
        if settings.auth_method == "refresh_token":
            return Check("token", SKIP, "not refreshed: a refresh would rotate the user's refresh token")
        from airflow_provider_smart.auth.tokens import InMemoryTokenStore

        requested = (self.scope or settings.scope or "").split()
        token = build_auth(settings, scope=self.scope, token_store=InMemoryTokenStore()).get_token(force=True)
        granted = (token.scope or "").split()
        lifetime = token.expires_in(self.clock())
        missing = [s for s in requested if s not in granted]
        details = {"requested": requested, "granted": granted, "lifetime_seconds": round(lifetime or 0)}
        life = f"lifetime {lifetime:.0f} s" if lifetime is not None else "no lifetime given"
        summary = f"granted {' '.join(granted) or '(nothing said)'}; {life}"
        status = OK
        if not token.scope:
            status, summary = (
                WARN,
                f"the server did not say which scopes it granted (requested {' '.join(requested)}); {life}",
            )
        elif missing:
            status = WARN
            summary += f"; requested but not granted: {' '.join(missing)}"
        if lifetime is not None and lifetime < SHORT_LIFETIME:
            status = WARN
            summary += " (short: renewed every minute or so)"
        return Check("token", status, summary, details)

    def bulk_export(self) -> Check:
        statement = self.capability if self.capability is not None else self._metadata()[0]
        if statement is None:
            return Check("bulk export", WARN, "no CapabilityStatement at /metadata: the $export levels are unknown")
        levels = export_levels(statement)
        declared = [name for name, ok in levels.items() if ok]
        details = {"levels": levels}
        if not declared:
            return Check("bulk export", WARN, "the CapabilityStatement declares no $export operation", details)
        missing = [name for name, ok in levels.items() if not ok]
        summary = f"$export declared at {', '.join(declared)} level" + (
            f"; not at {', '.join(missing)}" if missing else ""
        )
        return Check("bulk export", OK, summary, details, short=f"$export at {', '.join(declared)}")

    def vendor(self) -> Check:
        statement = self.capability or {}
        software: dict[str, Any] = statement["software"] if isinstance(statement.get("software"), dict) else {}
        seen = f"software {software.get('name')!r} {software.get('version') or ''}".strip()
        if statement.get("publisher"):
            seen += f", publisher {statement.get('publisher')!r}"
        details: dict[str, Any] = {"software": software.get("name"), "publisher": statement.get("publisher")}
        named = self.extra.get("vendor")
        try:  # vendor profiles (bulk/vendors.py) arrive with the vendor-profile work
            vendors = importlib.import_module("airflow_provider_smart.bulk.vendors")
        except ModuleNotFoundError:
            return Check("vendor", SKIP, f"{seen}; profile detection is not available in this version", details)
        config = self.smart_config.raw if self.smart_config is not None else None
        profile = vendors.detect_profile(statement, config)
        details["profile"] = profile.name
        how = "detected"
        if named and named != profile.name:
            how = f"named in the connection ({named}); detection says {profile.name}"
            details["profile"] = named
        summary = f"profile {details['profile']} ({how}); {seen}"
        return Check("vendor", OK, summary, details, short=f"vendor {details['profile']}")

    def tls(self) -> Check:
        parts = urlsplit(self.settings.fhir_base_url)
        if parts.scheme != "https":
            return Check("tls", SKIP, "plain http: no certificate", short="no TLS")
        host, port = parts.hostname or "", parts.port or 443
        not_after = certificate_expiry(host, port, self.settings.timeout)
        days = (not_after - datetime.now(UTC)).total_seconds() / 86400
        summary = f"the certificate of {host}:{port} expires {not_after:%Y-%m-%d} ({days:.0f} days)"
        details = {"not_after": not_after.isoformat(), "days_left": round(days)}
        if days < 0:
            return Check("tls", FAIL, summary.replace("expires", "expired"), details)
        if days < CERT_WARN_DAYS:
            return Check("tls", WARN, summary + ": renew it soon", details)
        return Check("tls", OK, summary, details, short=f"TLS certificate valid {days:.0f} days")

    def jku(self) -> Check:
        from airflow_provider_smart.auth.jwks import fetch_jwks

        url = self.settings.jku
        if not url:
            return Check("jku", SKIP, "no JWK Set URL (jku) in the connection", short="")
        document = fetch_jwks(url, verify=self.settings.verify, timeout=self.settings.timeout)
        kids = [str(k.get("kid")) for k in document["keys"]]
        details = {"url": url, "kids": kids}
        if self.settings.kid not in kids:
            return Check(
                "jku",
                FAIL,
                f"{url} is reachable but lacks kid {self.settings.kid!r} (it has {', '.join(kids)})",
                details,
            )
        return Check(
            "jku",
            OK,
            f"{url} is reachable and holds kid {self.settings.kid} ({len(kids)} key(s))",
            details,
            short="jku reachable",
        )


def export_levels(statement: dict[str, Any]) -> dict[str, bool]:
    """Which ``$export`` operations a CapabilityStatement declares: system, Patient and Group level."""
    levels = {"system": False, "Patient": False, "Group": False}

    def exports(operations: Any) -> bool:
        for op in operations if isinstance(operations, list) else []:
            if not isinstance(op, dict):
                continue
            text = f"{op.get('name', '')} {op.get('definition', '')}".lower()
            if "export" in text:
                return True
        return False

    for rest in statement.get("rest") or []:
        if not isinstance(rest, dict):
            continue
        levels["system"] |= exports(rest.get("operation"))
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and resource.get("type") in ("Patient", "Group"):
                levels[resource["type"]] |= exports(resource.get("operation"))
    return levels


def certificate_expiry(host: str, port: int, timeout: float) -> datetime:
    """When the certificate ``host:port`` presents expires. Read without verifying it: an expired or
    untrusted certificate must still say when it expires (the other checks fail on trust)."""
    from cryptography import x509

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ValueError(f"{host}:{port} presented no certificate")
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def _describe(exc: Exception) -> str:
    from airflow_provider_smart.exceptions import SmartError

    if isinstance(exc, SmartError):
        return exc.message
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return f"TLS failed: {exc}"
    if isinstance(exc, requests.ConnectionError | OSError):
        return f"cannot connect ({type(exc).__name__}): check the URL and that this machine can reach it"
    if isinstance(exc, requests.Timeout):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}"
