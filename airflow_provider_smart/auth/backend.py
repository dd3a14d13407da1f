"""SMART token auths for ``requests``: mint, cache and renew access tokens.

``BackendServicesAuth`` (``client_credentials`` with a signed JWT assertion) and ``ClientSecretAuth``
(``client_credentials`` with a secret) live here; ``SmartClient`` (App Launch refresh tokens) builds on
the same :class:`TokenAuth`: a token cache renewed min(60 s, 15 % of its lifetime) before expiry, one token
request at a time across threads (and across processes when the store can lock), the token sent only
to allowed origins, and one replay on a 401.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import email.utils
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from airflow_provider_smart.auth.client_auth import (
    ASSERTION_LIFETIME,
    ClientAuthentication,
    ClientSecret,
    PrivateKeyJwt,
    request_token,
)
from airflow_provider_smart.auth.discovery import (
    SmartConfiguration,
    discover_smart_configuration,
    normalise_base_url,
)
from airflow_provider_smart.auth.keys import PrivateKey
from airflow_provider_smart.auth.tokens import (
    MAX_RENEW_FRACTION,
    RENEW_FRACTION,
    InMemoryTokenStore,
    StoredToken,
    TokenStore,
    parse_token_response,
)
from airflow_provider_smart.auth.transport import Deadline
from airflow_provider_smart.exceptions import SmartConfigError, SmartTransportError, TokenStoreError
from airflow_provider_smart.origins import OriginPolicy, insecure_http_refusal, redact_url
from airflow_provider_smart.sessions import DEFAULT_TIMEOUT, new_session

log = logging.getLogger(__name__)

TOKEN_REQUEST_ATTEMPTS = 6  # transport errors, 429 and 5xx from the token endpoint are retried (new assertion each)
TOKEN_RETRY_BACKOFF = 0.5  # first pause; doubles each try; the whole mint stays within the timeout


def _retry_after_seconds(value: str | None) -> float | None:
    """A token endpoint's ``Retry-After``: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when is not None and when.tzinfo is not None else None


DEFAULT_EXPIRY_SKEW = 60.0
STORE_WRITE_ATTEMPTS = 3  # a refused token-store write is retried at once, then kept in memory...
STORE_RETRY_INTERVAL = 10.0  # ...and retried at most this often while the process keeps using it


_MINT_LOCKS: dict[str, threading.Lock] = {}
_MINT_LOCKS_GUARD = threading.Lock()


def mint_lock(store_key: str) -> threading.Lock:
    """The one lock of a token (its store key) in this process: every auth object of one connection and
    scope shares it, so however many hooks, tasks' threads or triggers ask at once, one mints and the
    others find its token in the store. (A lock per auth object let N hooks mint N tokens.)"""
    with _MINT_LOCKS_GUARD:
        return _MINT_LOCKS.setdefault(store_key, threading.Lock())


def describe_store_failure(exc: BaseException) -> str:
    """What went wrong, without the exception's text when it could echo the token (database errors do)."""
    if isinstance(exc, TokenStoreError):
        return exc.message
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{type(exc).__name__}: {exc.strerror or 'I/O error'}{where}"
    return type(exc).__name__


class TokenAuth(AuthBase):
    """Shared machinery of token-minting auths; subclasses implement :meth:`_token_request`."""

    def __init__(
        self,
        *,
        client_auth: ClientAuthentication,
        scope: str | None,
        token_url: str | None = None,
        fhir_base_url: str | None = None,
        smart_configuration: SmartConfiguration | None = None,
        token_store: TokenStore | None = None,
        store_key: str | None = None,
        expiry_skew: float | None = None,
        session: requests.Session | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        allowed_hosts: Iterable[str] = (),
        origins: OriginPolicy | None = None,
        on_new_token: Callable[[StoredToken], None] | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        client_id = client_auth.client_id
        if not client_id:
            raise SmartConfigError("client_id is required (the connection's Login field).", field="login")
        if not (token_url or fhir_base_url or smart_configuration):
            raise SmartConfigError("Give token_url, fhir_base_url or smart_configuration to find the token endpoint.")
        self.client_id = client_id
        self.client_auth = client_auth
        self.scope = scope or ""
        self.allow_insecure_http = allow_insecure_http
        self.fhir_base_url = (
            normalise_base_url(fhir_base_url, field="fhir_base_url", allow_insecure_http=allow_insecure_http)
            if fhir_base_url
            else None
        )
        if token_url:
            normalise_base_url(token_url, field="token_url", allow_insecure_http=allow_insecure_http)
        # No downgrade: with an https FHIR base (or, lacking one, an https token URL) nothing goes over http.
        self._base_is_https = urlsplit(self.fhir_base_url or token_url or "").scheme == "https"
        self._token_url = self._checked_token_url(token_url, "token_url") if token_url else None
        self._smart_configuration = smart_configuration
        self.token_store: TokenStore = token_store or InMemoryTokenStore()
        self.store_key = store_key or f"{type(self).__name__}:{client_id}@{token_url or self.fhir_base_url}"
        # Renew when less than min(expiry_skew, a fraction of the lifetime) is left: by default
        # min(60 s, 15 %); an explicit expiry_skew is capped at half the lifetime (never a mint per request).
        self.expiry_skew = DEFAULT_EXPIRY_SKEW if expiry_skew is None else float(expiry_skew)
        self._renew_fraction = RENEW_FRACTION if expiry_skew is None else MAX_RENEW_FRACTION
        self.timeout = timeout
        # Token requests never go through a session that carries this auth.
        self._http = session or new_session(timeout=timeout)
        self._on_new_token = on_new_token
        self._lock = mint_lock(self.store_key)
        self._unsaved: StoredToken | None = None  # a token the store refused; this process's only copy
        self._unsaved_precious = False  # ...and it carries a rotated refresh token
        self._unsaved_message = ""
        self._next_save_retry = 0.0
        self._atexit_registered = False
        # Shared with the Bulk Data client when given: one allow-list, so neither can drift from the other.
        self.origins = origins or OriginPolicy(
            allow_insecure_http=allow_insecure_http, base_is_https=self._base_is_https
        )
        for entry in [self.fhir_base_url or "", *allowed_hosts]:
            refusal = self.origins.refusal(entry.strip()) if "://" in entry else None
            if refusal:
                raise SmartConfigError(f"allowed_hosts: {refusal}.", field="allowed_hosts")
            self.origins.add(entry)
        self.token_requests = 0

    # --- discovery ------------------------------------------------------------------------------
    @property
    def smart_configuration(self) -> SmartConfiguration:
        if self._smart_configuration is None:
            if self.fhir_base_url is None:
                raise SmartConfigError("fhir_base_url is needed to discover the SMART configuration.")
            self._smart_configuration = discover_smart_configuration(
                self.fhir_base_url,
                session=self._http,
                timeout=self.timeout,
                allow_insecure_http=self.allow_insecure_http,
            )
        return self._smart_configuration

    @property
    def token_url(self) -> str:
        if self._token_url is None:
            self._token_url = self._checked_token_url(self.smart_configuration.token_endpoint, "token_endpoint")
        return self._token_url

    def _checked_token_url(self, url: str, field: str) -> str:
        """``url`` if it may receive our credentials: never plain http when the connection is https."""
        refusal = insecure_http_refusal(
            url, base_is_https=self._base_is_https, allow_insecure_http=self.allow_insecure_http
        )
        if refusal:
            raise SmartConfigError(f"{field}: {refusal}. Nothing was sent there.", field=field)
        return url

    # --- origins --------------------------------------------------------------------------------
    def allow_origin(self, url: str) -> None:
        """Let ``url``'s origin receive the token too (e.g. a status URL on another host)."""
        self.origins.add(url)

    def is_allowed(self, url: str) -> bool:
        return self.origins.allows(url)

    # --- tokens ---------------------------------------------------------------------------------
    def _grant_form(self, current: StoredToken | None) -> dict[str, str]:
        """The grant's own form fields (``grant_type``...); client authentication is added separately."""
        raise NotImplementedError

    def _keep_from_previous(self, new: StoredToken, current: StoredToken | None) -> StoredToken:
        """What a fresh token inherits from the one it replaces (nothing, for client_credentials)."""
        return new

    def _mint(self, current: StoredToken | None) -> StoredToken:
        token_url = self.token_url
        # One overall deadline for every attempt (and the pauses between them): a stalled or dripping
        # token endpoint cannot hold the caller longer than the timeout it chose.
        deadline = Deadline(self.timeout)
        for attempt in range(1, TOKEN_REQUEST_ATTEMPTS + 1):
            pause = TOKEN_RETRY_BACKOFF * 2 ** (attempt - 1)
            try:
                # A new form each attempt: a JWT assertion is single-use (fresh jti on retries).
                response = request_token(
                    self._http, token_url, self._grant_form(current), self.client_auth, self.timeout, deadline=deadline
                )
            except SmartTransportError:
                if attempt == TOKEN_REQUEST_ATTEMPTS or deadline.remaining() <= pause:
                    raise
                why = "no answer"
            else:
                # 429 (Medplum limits /oauth2 per IP, without Retry-After) and 5xx (503 overloaded) say "not
                # now": back off exponentially, or as long as Retry-After asks, within the deadline.
                retryable = response.status_code == 429 or response.status_code >= 500
                asked = _retry_after_seconds(response.headers.get("Retry-After"))
                if asked is not None:
                    pause = asked
                if not retryable or attempt == TOKEN_REQUEST_ATTEMPTS or deadline.remaining() <= pause:
                    break
                why = f"HTTP {response.status_code}"
            log.warning(
                "Token endpoint %s answered %s (attempt %d); retrying in %.1f s.",
                redact_url(token_url),
                why,
                attempt,
                pause,
            )
            time.sleep(pause)
        self.token_requests += 1
        token = self._keep_from_previous(parse_token_response(response, token_url), current)
        if self._on_new_token is not None:
            self._on_new_token(token)
        log.info(
            "Obtained an access token for client %s (scope %r, expires in %.0f s).",
            self.client_id,
            token.scope,
            token.expires_in() or 0,
        )
        return token

    def get_token(self, *, force: bool = False) -> StoredToken:
        """A token with more than the renewal margin left, minting one if needed (one at a time).

        The margin is ``min(expiry_skew, 15 % of the token's lifetime)``, so short-lived tokens are not
        re-minted on every request. Threads that waited while another minted use that token: one mint
        serves them all. When the store offers ``lock(key)`` (the file store does), minting also holds
        that lock, so separate processes sharing the store mint once, and never use a refresh token twice.
        """
        seen: str | None = None
        if not force:
            token = self._cached()
            if token is not None and token.access_token and self._fresh(token):
                return token
            seen = token.access_token if token is not None else None
        with self._locked():
            # Re-read: another thread or process may have minted while we waited for the locks.
            current = self._cached(locked=True)
            if current is not None and current.access_token and not force:
                if self._fresh(current):
                    return current
                remaining = current.expires_in()
                if current.access_token != seen and (remaining is None or remaining > 0):
                    return current  # minted while we waited: use it rather than mint again
            token = self._mint(current)
            self._save(token, current)
            return token

    def is_fresh(self, token: StoredToken) -> bool:
        """More than this auth's renewal margin left on ``token`` (no I/O: callers on an event loop use it)."""
        return token.is_fresh(self.expiry_skew, fraction=self._renew_fraction)

    _fresh = is_fresh

    def invalidate(self, access_token: str | None = None) -> None:
        """Mark the cached token expired (only if it is still ``access_token``, so concurrent 401s mint once).

        The entry is kept, expired, rather than deleted: it may hold a refresh token still needed.
        """
        with self._locked():  # read-modify-write: unlocked, it could restore a refresh token just rotated away
            current = self._cached(locked=True)
            if current is not None and (access_token is None or current.access_token == access_token):
                self._save(dataclasses.replace(current, expires_at=0.0), current)

    # --- the token store, and what happens when it cannot be written ---------------------------------
    def _cached(self, *, locked: bool = False) -> StoredToken | None:
        """The current token: one the store refused to save (kept in memory) wins over the store's copy.

        While such a token is pending, the write is retried every ``STORE_RETRY_INTERVAL`` seconds
        (under the locks: never racing a mint that replaces it).
        """
        if self._unsaved is None:
            return self.token_store.get(self.store_key)
        if time.monotonic() >= self._next_save_retry:
            if locked:
                self._retry_save()
            elif self._lock.acquire(blocking=False):
                try:
                    store_lock = getattr(self.token_store, "lock", None)
                    with store_lock(self.store_key) if store_lock else contextlib.nullcontext():
                        self._retry_save()
                finally:
                    self._lock.release()
        unsaved = self._unsaved
        return unsaved if unsaved is not None else self.token_store.get(self.store_key)

    def _save(self, token: StoredToken, previous: StoredToken | None) -> None:
        """Write ``token`` to the store; if that fails, keep it in memory, retry, and say what to do."""
        rotated = bool(token.refresh_token) and (previous is None or token.refresh_token != previous.refresh_token)
        self._unsaved_precious = self._unsaved_precious or rotated
        for attempt in range(1, STORE_WRITE_ATTEMPTS + 1):
            try:
                self.token_store.set(self.store_key, token)
            except Exception as exc:  # any store: a file, a Variable, a user's own
                failure = describe_store_failure(exc)
                if attempt < STORE_WRITE_ATTEMPTS:
                    time.sleep(0.2 * attempt)
            else:
                if self._unsaved is not None:
                    log.warning("Token store %r accepted the token kept in memory; it is saved now.", self.token_store)
                self._unsaved = None
                self._unsaved_precious = False
                return
        self._unsaved = token
        self._next_save_retry = time.monotonic() + STORE_RETRY_INTERVAL
        self._unsaved_message = self._store_failure_message(failure)
        if self._unsaved_precious:
            log.error(self._unsaved_message)
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(self._at_exit)
        else:
            log.warning(
                "Token store %r could not save the access token for %s (%s); keeping it in memory for this "
                "process (no refresh token is at stake).",
                self.token_store,
                self.store_key,
                failure,
            )

    def _store_failure_message(self, failure: str) -> str:
        if not self._unsaved_precious:
            return f"Token store {self.token_store!r} could not save the token for {self.store_key} ({failure})."
        return (
            f"Token store {self.token_store!r} could not save the rotated refresh token for {self.store_key} "
            f"({failure}). The server replaced the previous refresh token, so the copy in the store is probably "
            f"no longer valid: this process (pid {os.getpid()}) holds the only valid one. It keeps using it and "
            "retries the write. Fix the store now (disk space, file permissions, or the Airflow Variable / "
            "metadata database it writes to); if this process ends before a write succeeds, the grant is lost "
            "and must be re-authorised (airflow-smart authorize --conn-id <conn>, asking for offline_access)."
        )

    def _retry_save(self) -> None:
        token = self._unsaved
        if token is None:
            return
        try:
            self.token_store.set(self.store_key, token)
        except Exception as exc:
            self._next_save_retry = time.monotonic() + STORE_RETRY_INTERVAL
            self._unsaved_message = self._store_failure_message(describe_store_failure(exc))
            return
        log.warning("Token store %r accepted the token kept in memory; it is saved now.", self.token_store)
        if self._unsaved is token:
            self._unsaved = None
            self._unsaved_precious = False

    @property
    def unsaved(self) -> bool:
        """True while a token the store refused is held only in this process's memory."""
        return self._unsaved is not None

    @property
    def unsaved_refresh_token(self) -> bool:
        """True while a rotated refresh token the store refused is held only in this process's memory."""
        return self._unsaved is not None and self._unsaved_precious

    def ensure_saved(self) -> None:
        """Retry writing a token the store refused; raise :class:`TokenStoreError` if it still cannot.

        Call it before a process ends (a task's last step): it turns a silently lost refresh token into
        a failed task whose message says what to do.
        """
        with self._locked():
            if self._unsaved is None:
                return
            self._retry_save()
            if self._unsaved is not None:
                raise TokenStoreError(
                    self._unsaved_message,
                    store=repr(self.token_store),
                    key=self.store_key,
                    unsaved=self._unsaved_precious,
                )

    def _at_exit(self) -> None:
        if self._unsaved is None:
            return
        self._retry_save()
        if self._unsaved is not None and self._unsaved_precious:
            log.critical("Process exiting with an unsaved refresh token. %s", self._unsaved_message)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This auth's thread lock, plus the store's cross-process lock when it has one."""
        store_lock = getattr(self.token_store, "lock", None)
        with self._lock, store_lock(self.store_key) if store_lock else contextlib.nullcontext():
            yield

    # --- requests integration -------------------------------------------------------------------
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if not request.url or not self.is_allowed(request.url):
            return request
        token = self.get_token()
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        request.register_hook("response", self._replay_on_401)
        return request

    def _replay_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401 or getattr(response.request, "_smart_replayed", False):
            return response
        if not self.is_allowed(response.request.url or ""):
            return response  # a redirect led elsewhere: never hand that origin a fresh token
        sent = (response.request.headers.get("Authorization") or "").removeprefix("Bearer ")
        log.info("HTTP 401 from %s: renewing the access token and replaying the request once.", response.url)
        response.content  # noqa: B018 - drain the body so the connection returns to the pool
        response.close()
        self.invalidate(sent)
        token = self.get_token()
        replay = response.request.copy()
        replay.headers["Authorization"] = f"Bearer {token.access_token}"
        replay._smart_replayed = True  # type: ignore[attr-defined]
        retried = response.connection.send(replay, **kwargs)
        retried.history.append(response)
        retried.request = replay
        return retried

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(client_id={self.client_id!r}, token_url={self._token_url!r}, scope={self.scope!r})"
        )


class ClientCredentialsAuth(TokenAuth):
    """The ``client_credentials`` grant (SMART Backend Services), with any client authentication."""

    def _grant_form(self, current: StoredToken | None) -> dict[str, str]:
        if not self.scope.strip():
            raise SmartConfigError("scope is empty: Backend Services token requests require one.", field="scope")
        return {"grant_type": "client_credentials", "scope": self.scope}


class BackendServicesAuth(ClientCredentialsAuth):
    """SMART Backend Services with a signed JWT client assertion (``private_key_jwt``).

    :param private_key: PEM (str/bytes) or a ``cryptography`` RSA/EC private key.
    :param alg: RS384 or ES384 (SMART's required pair), or ES256/RS256/PS384...; by default chosen from
        the key type and the server's advertised ``token_endpoint_auth_signing_alg_values_supported``.
    :param kid: the key id registered in the client's JWK Set (SMART requires it in the header).
    :param jku: the registered JWKS URL; sent only when given.
    """

    def __init__(
        self,
        *,
        client_id: str,
        private_key: str | bytes | PrivateKey,
        scope: str | None = "system/*.read",
        alg: str | None = None,
        kid: str | None = None,
        jku: str | None = None,
        assertion_lifetime: int = ASSERTION_LIFETIME,
        **kwargs: Any,
    ) -> None:
        jwt_auth = PrivateKeyJwt(
            client_id,
            private_key,
            alg=alg,
            kid=kid,
            jku=jku,
            lifetime=assertion_lifetime,
            server_algs=self._server_algs,
        )
        super().__init__(client_auth=jwt_auth, scope=scope, **kwargs)
        self._jwt = jwt_auth

    def _server_algs(self) -> list[str] | None:
        # Only consult discovery when it happens anyway (no token_url given), never just for the alg.
        if self._token_url is None or self._smart_configuration is not None:
            return self.smart_configuration.token_endpoint_auth_signing_alg_values_supported
        return None

    @property
    def alg(self) -> str:
        return self._jwt.alg

    @property
    def kid(self) -> str | None:
        return self._jwt.kid

    def client_assertion(self, token_url: str) -> str:
        return self._jwt.assertion(token_url)

    def __repr__(self) -> str:
        return f"BackendServicesAuth(client_id={self.client_id!r}, kid={self.kid!r}, scope={self.scope!r})"


class ClientSecretAuth(ClientCredentialsAuth):
    """``client_credentials`` with a client secret, sent as HTTP Basic (default) or in the form body."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        scope: str | None = "system/*.read",
        method: str = "client_secret_basic",
        **kwargs: Any,
    ) -> None:
        super().__init__(client_auth=ClientSecret(client_id, client_secret, method), scope=scope, **kwargs)
        self.method = method

    def __repr__(self) -> str:
        return f"ClientSecretAuth(client_id={self.client_id!r}, method={self.method!r}, scope={self.scope!r})"
