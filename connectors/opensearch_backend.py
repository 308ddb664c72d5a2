"""The OpenSearch backend of the search-index store, on the ``opensearch-py`` client.

It only translates: :class:`connectors.search_index.Backend` calls into client
calls, and the client's exceptions into ``Unreachable`` (no HTTP response) or
``ServerError`` (an error response). The client's own retries are off, so
``core.retry`` (called by the store) is the one place that retries.
Tested live against OpenSearch 2.19 (``deploy/local/services.sh start opensearch``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import opensearchpy
from opensearchpy import OpenSearch

from connectors.search_index import Backend, IndexSetupError, ServerError, Unreachable, error_parts as _error_parts

MIN_MAJOR = 1


class OpenSearchBackend(Backend):
    name = "OpenSearch"
    start_hint = (
        "is OpenSearch running? deploy/local/services.sh start opensearch"
        " (or: docker compose -f deploy/docker-compose.yml --profile opensearch up -d); check index.hosts"
    )

    def __init__(self, settings):
        super().__init__(settings.hosts)
        if settings.api_key is not None:
            raise IndexSetupError(
                "index.api_key is an Elasticsearch credential; OpenSearch takes a username and password",
                hint="set index.username and NEWSWATCH_INDEX__PASSWORD, or index.backend: elasticsearch",
            )
        kwargs: dict[str, Any] = {
            "timeout": settings.timeout_s,
            "max_retries": 0,
            "retry_on_timeout": False,
            "verify_certs": settings.verify_certs,
            "ssl_show_warn": settings.verify_certs,
        }
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else ""
            kwargs["http_auth"] = (settings.username, password)
        self.client = OpenSearch(hosts=list(settings.hosts), **kwargs)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except opensearchpy.SSLError as exc:
            raise IndexSetupError(
                f"TLS with OpenSearch at {self.url} failed ({what}): {exc.info or exc.error}",
                hint="check the server certificate, or set index.verify_certs: false for a test cluster",
            ) from exc
        except opensearchpy.ConnectionError as exc:
            raise Unreachable(f"{what}: {type(exc).__name__}: {exc.info or exc.error}") from exc
        except opensearchpy.TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 500
            err_type, reason = _error_parts(exc.info, str(exc.error))
            raise ServerError(status, err_type or (exc.error if isinstance(exc.error, str) else None), reason) from exc

    def check_server(self) -> str:
        with self._errors("info"):
            info = self.client.info()
        version = info.get("version") or {}
        number = str(version.get("number", "?"))
        if version.get("distribution") != "opensearch":
            raise IndexSetupError(
                f"the server at {self.url} is Elasticsearch {number}, but index.backend is opensearch",
                hint="set index.backend: elasticsearch (NEWSWATCH_INDEX__BACKEND=elasticsearch)",
            )
        try:
            major = int(number.split(".")[0])
        except ValueError:
            major = 0
        if major < MIN_MAJOR:
            raise IndexSetupError(f"OpenSearch {number} at {self.url} is too old", hint="use OpenSearch 2.x or newer")
        return f"OpenSearch {number}"

    def bulk(self, operations: list[dict[str, Any]], *, refresh: bool | str = False) -> dict[str, Any]:
        params = {"refresh": str(refresh).lower()} if refresh else {}
        with self._errors("bulk"):
            return self.client.bulk(body=operations, params=params)

    def mget(self, index: str, ids: Sequence[str], source: Sequence[str] | bool = True) -> list[dict[str, Any]]:
        params: dict[str, Any] = {}
        if source is False or (source is not True and not source):
            params["_source"] = "false"
        elif source is not True:
            params["_source_includes"] = ",".join(source)
        with self._errors("mget"):
            return self.client.mget(body={"ids": list(ids)}, index=index, params=params)["docs"]

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._errors("search"):
            return self.client.search(index=index, body=body)

    def count(self, index: str) -> int:
        with self._errors("count"):
            return int(self.client.count(index=index)["count"])

    def get_alias(self, name: str) -> list[str] | None:
        # ignore=404: an expected answer, which the client would otherwise log as a failure.
        with self._errors("get_alias"):
            found = self.client.indices.get_alias(name=name, ignore=404)
        if found.get("status") == 404 and "error" in found:
            return None
        return sorted(found)

    def index_exists(self, name: str) -> bool:
        with self._errors("exists"):
            return bool(self.client.indices.exists(index=name, ignore=404))

    def get_mapping_meta(self, index: str) -> dict[str, Any]:
        with self._errors("get_mapping"):
            resp = self.client.indices.get_mapping(index=index)
        for body in resp.values():
            return (body.get("mappings") or {}).get("_meta") or {}
        return {}

    def create_index(self, name: str, body: dict[str, Any]) -> None:
        with self._errors("create_index"):
            self.client.indices.create(index=name, body=body)

    def has_analyzer(self, name: str) -> bool:
        with self._errors("analyze"):
            resp = self.client.indices.analyze(body={"analyzer": name, "text": "probe"}, ignore=400)
        return "error" not in resp

    def close(self) -> None:
        self.client.close()
