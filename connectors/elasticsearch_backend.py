"""The Elasticsearch 8/9 backend of the search-index store, on the ``elasticsearch`` client.

Same mappings, documents and queries as the OpenSearch backend (they live in
``connectors/search_index.py``); this module only translates calls and the
client's exceptions into ``Unreachable``/``ServerError``. The client's own
retries are off, so ``core.retry`` is the one place that retries.

Not tested against a live Elasticsearch here (none can run on the build
machines); the unit tests check the requests it sends to a fake server that
answers like Elasticsearch. Use ``deploy/docker-compose.yml --profile
elasticsearch`` to try it live.

The client refuses servers that are not Elasticsearch (UnsupportedProductError),
which becomes a clear setup error. A 9.x client sends
``compatible-with=9`` headers, which an 8.x server rejects; that too is
reported with the fix (install a client of the server's major version).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import elastic_transport
import elasticsearch
from elasticsearch import Elasticsearch

from connectors.search_index import Backend, IndexSetupError, ServerError, Unreachable, error_parts as _error_parts

MIN_MAJOR = 8


class ElasticsearchBackend(Backend):
    name = "Elasticsearch"
    start_hint = (
        "is Elasticsearch running? docker compose -f deploy/docker-compose.yml --profile elasticsearch up -d;"
        " check index.hosts"
    )

    def __init__(self, settings):
        super().__init__(settings.hosts)
        kwargs: dict[str, Any] = {
            "request_timeout": settings.timeout_s,
            "max_retries": 0,
            "retry_on_timeout": False,
            "verify_certs": settings.verify_certs,
        }
        if settings.api_key is not None:
            kwargs["api_key"] = settings.api_key.get_secret_value()
        elif settings.username:
            password = settings.password.get_secret_value() if settings.password else ""
            kwargs["basic_auth"] = (settings.username, password)
        self.client = Elasticsearch(list(settings.hosts), **kwargs)

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except elasticsearch.UnsupportedProductError as exc:
            raise IndexSetupError(
                f"the server at {self.url} is not Elasticsearch (OpenSearch?), but index.backend is elasticsearch",
                hint="set index.backend: opensearch (NEWSWATCH_INDEX__BACKEND=opensearch)",
            ) from exc
        except elasticsearch.ApiError as exc:
            err_type, reason = _error_parts(exc.body, str(exc.message))
            if exc.meta.status == 400 and err_type == "media_type_header_exception":
                raise IndexSetupError(
                    f"Elasticsearch at {self.url} rejected the {elasticsearch.__versionstr__} client's compatibility headers: {reason}",
                    hint="install the client of the server's major version, e.g. pip install 'elasticsearch>=8,<9' for an 8.x server",
                ) from exc
            raise ServerError(exc.meta.status, err_type, reason) from exc
        except elastic_transport.TlsError as exc:
            raise IndexSetupError(
                f"TLS with Elasticsearch at {self.url} failed ({what}): {exc}",
                hint="check the server certificate, or set index.verify_certs: false for a test cluster",
            ) from exc
        except (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout) as exc:
            raise Unreachable(f"{what}: {type(exc).__name__}: {exc}") from exc

    def check_server(self) -> str:
        with self._errors("info"):
            info = self.client.info().body
        number = str((info.get("version") or {}).get("number", "?"))
        try:
            major = int(number.split(".")[0])
        except ValueError:
            major = 0
        if major < MIN_MAJOR:
            raise IndexSetupError(f"Elasticsearch {number} at {self.url} is too old", hint="use Elasticsearch 8.x or 9.x")
        return f"Elasticsearch {number}"

    def bulk(self, operations: list[dict[str, Any]], *, refresh: bool | str = False) -> dict[str, Any]:
        with self._errors("bulk"):
            return self.client.bulk(operations=operations, refresh=refresh if refresh else None).body

    def mget(self, index: str, ids: Sequence[str], source: Sequence[str] | bool = True) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        if source is False or (source is not True and not source):
            kwargs["source"] = False
        elif source is not True:
            kwargs["source_includes"] = list(source)
        with self._errors("mget"):
            return self.client.mget(index=index, ids=list(ids), **kwargs).body["docs"]

    def search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._errors("search"):
            return self.client.search(index=index, body=body).body

    def count(self, index: str) -> int:
        with self._errors("count"):
            return int(self.client.count(index=index).body["count"])

    def get_alias(self, name: str) -> list[str] | None:
        try:
            with self._errors("get_alias"):
                found = self.client.indices.get_alias(name=name).body
        except ServerError as exc:
            if exc.status == 404:
                return None
            raise
        return sorted(found)

    def index_exists(self, name: str) -> bool:
        with self._errors("exists"):
            return bool(self.client.indices.exists(index=name))

    def get_mapping_meta(self, index: str) -> dict[str, Any]:
        with self._errors("get_mapping"):
            resp = self.client.indices.get_mapping(index=index).body
        for body in resp.values():
            return (body.get("mappings") or {}).get("_meta") or {}
        return {}

    def create_index(self, name: str, body: dict[str, Any]) -> None:
        with self._errors("create_index"):
            self.client.indices.create(
                index=name, settings=body.get("settings"), mappings=body.get("mappings"), aliases=body.get("aliases")
            )

    def has_analyzer(self, name: str) -> bool:
        try:
            with self._errors("analyze"):
                self.client.indices.analyze(analyzer=name, text="probe")
        except ServerError as exc:
            if exc.status == 400:
                return False
            raise
        return True

    def close(self) -> None:
        self.client.close()
