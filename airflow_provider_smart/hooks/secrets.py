"""Airflow's secret masker, as the library's ``on_secret`` / ``on_new_token`` callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from airflow_provider_smart.auth.tokens import StoredToken

T = TypeVar("T")


def mask_secrets(*secrets: str | None) -> None:
    """Register secrets with Airflow's masker so they never reach task logs or rendered fields."""
    from airflow_provider_smart.compat import mask_secret

    for secret in secrets:
        if secret:
            mask_secret(secret)


def mask_token(token: StoredToken) -> None:
    mask_secrets(token.access_token, token.refresh_token, token.id_token)


def scrub(value: T) -> T:
    """``value`` (text, or JSON-like data) with every secret registered with the masker replaced by ``***``.

    Tokens are registered as they are minted (:func:`mask_token`), so a token a careless server echoes
    back (in a manifest's ``request`` URL, an error file's diagnostics, a failure's OperationOutcome) is
    caught wherever it went: the summary (XCom, ``manifest.json``'s copy), asset event ``extra``,
    OpenLineage facets and failure messages, none of which Airflow masks by itself.
    """
    from airflow_provider_smart.compat import redact

    return redact(value)  # type: ignore[return-value]


@contextmanager
def scrubbed_failures() -> Iterator[None]:
    """Re-raise our errors with their message and context scrubbed (see :func:`scrub`)."""
    from airflow_provider_smart.exceptions import SmartError

    try:
        yield
    except SmartError as exc:
        exc.message = scrub(exc.message)
        exc.args = (exc.message, *exc.args[1:])
        exc.context = scrub(exc.context)
        raise


F = TypeVar("F", bound=Callable[..., Any])


def scrubs_failures(method: F) -> F:
    """Decorate an operator's ``execute``/``execute_complete`` with :func:`scrubbed_failures`."""

    @wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with scrubbed_failures():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
