"""Fixtures for the Bulk Data client tests: a fake clock, in-memory paths, sandboxes and clients."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from airflow_provider_smart.auth.keys import generate_private_key, private_key_to_pem, public_jwks

CLIENT_ID = "c1"
KID = "k1"
SCOPE = "system/*.rs"


class FakeTime:
    """Injected ``sleep``/``clock``: sleeping only moves the clock, so waits cost nothing."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


class MemPath:
    """A tiny in-memory stand-in for ``ObjectStoragePath``: only what the downloader may use.

    It deliberately has no ``replace`` and no ``stat``, to exercise the fallbacks.
    """

    def __init__(self, store: dict[str, bytes], path: str = "mem://bucket") -> None:
        self.store, self.path = store, path.rstrip("/")
        self.dirs: set[str] = store.setdefault("__dirs__", set())  # type: ignore[assignment]

    def __truediv__(self, other: str) -> MemPath:
        return MemPath(self.store, f"{self.path}/{other}")

    def __str__(self) -> str:
        return self.path

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def exists(self) -> bool:
        return self.path in self.store or self.path in self.dirs

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.dirs.add(self.path)

    def open(self, mode: str = "rb") -> Any:
        if "w" in mode:
            store, key = self.store, self.path

            class Writer(io.BytesIO):
                def close(self) -> None:
                    store[key] = self.getvalue()
                    super().close()

            return Writer()
        return io.BytesIO(self.store[self.path])

    def rename(self, target: MemPath) -> MemPath:
        self.store[target.path] = self.store.pop(self.path)
        return target

    def unlink(self) -> None:
        del self.store[self.path]

    def files(self) -> dict[str, bytes]:
        return {k: v for k, v in self.store.items() if k != "__dirs__"}


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture(scope="session")
def signing_key() -> Any:
    return generate_private_key("ES384")


@pytest.fixture
def sandbox_factory(sandbox_factory: Callable[..., Any], signing_key: Any) -> Callable[..., Any]:
    """``make(**SmartSandbox kwargs)``: the root factory's sandbox with client ``c1`` registered."""

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("patients", 20)
        clients = {CLIENT_ID: {"jwks": public_jwks(signing_key, kid=KID, alg="ES384"), "scopes": SCOPE}}
        return sandbox_factory(clients={**clients, **kwargs.pop("clients", {})}, **kwargs)

    return make


@pytest.fixture
def sb(sandbox_factory: Callable[..., Any]) -> Any:
    return sandbox_factory()


@pytest.fixture
def make_client(signing_key: Any, fake_time: FakeTime) -> Callable[..., Any]:
    """``make_client(sb, **kwargs)``: an authenticated client on a fake clock. ``kwargs`` are
    BulkExportClient's, plus RetryPolicy's (``attempts``, ``backoff_base``, ``max_retry_after``...) and the
    auth's ``client_id`` and ``scope``."""
    from airflow_provider_smart.auth import BackendServicesAuth
    from airflow_provider_smart.bulk import BulkExportClient, RetryPolicy

    def make(sb: Any, **kwargs: Any) -> Any:
        auth = BackendServicesAuth(
            client_id=kwargs.pop("client_id", CLIENT_ID),
            private_key=private_key_to_pem(signing_key),
            kid=KID,
            fhir_base_url=sb.url,
            scope=kwargs.pop("scope", SCOPE),
        )
        session = requests.Session()
        session.auth = auth
        policy = {
            k: kwargs.pop(k) for k in ("attempts", "backoff_base", "backoff_max", "max_retry_after") if k in kwargs
        }
        policy.setdefault("backoff_base", 0.01)
        kwargs.setdefault("clock", fake_time.clock)
        retry = RetryPolicy(sleep=fake_time.sleep, **policy)
        return BulkExportClient(session, sb.url, retry=retry, **kwargs)

    return make


@pytest.fixture
def mem_path() -> MemPath:
    return MemPath({})


def load_hostile() -> Any:
    """tests/bulk/hostile.py as module ``bulk_hostile`` (tests are not a package: importlib mode)."""
    import importlib.util
    import sys
    from pathlib import Path

    if "bulk_hostile" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bulk_hostile", Path(__file__).with_name("hostile.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["bulk_hostile"] = module
        spec.loader.exec_module(module)
    return sys.modules["bulk_hostile"]


@pytest.fixture
def hostile() -> Iterator[Any]:
    """A scripted, misbehaving Bulk Data server (see tests/bulk/hostile.py)."""
    server = load_hostile().HostileBulkServer().start()
    yield server
    server.stop()


@pytest.fixture
def another_hostile() -> Iterator[Any]:
    """A second scripted server (another FHIR server, or an attacker's), on its own origin."""
    server = load_hostile().HostileBulkServer().start()
    yield server
    server.stop()


@pytest.fixture
def plain_client(fake_time: FakeTime) -> Callable[..., Any]:
    """``plain_client(server, **RetryPolicy kwargs)``: a token-free client of a hostile server on a fake clock."""
    from airflow_provider_smart.bulk import BulkExportClient, RetryPolicy

    def make(server: Any, **policy: Any) -> Any:
        policy.setdefault("backoff_base", 0.01)
        retry = RetryPolicy(sleep=fake_time.sleep, **policy)
        return BulkExportClient(requests.Session(), server.url, retry=retry, clock=fake_time.clock)

    return make


@pytest.fixture
def peak_memory() -> Callable[..., tuple[Any, int]]:
    """``peak_memory(fn, *args)``: fn's result and the peak of Python allocations while it ran (bytes)."""
    import tracemalloc

    def measure(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
        tracemalloc.start()
        try:
            result = fn(*args, **kwargs)
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    return measure
