"""One Milvus collection of the store, opened the same way on Milvus Lite (a folder ending in .db) and on a Milvus
server (an http:// URI): the passages' (vectors.py) and the page images' vectors (multivector.py) each subclass
`Collection` with their own schema.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod

HNSW_BUILD = {"M": 16, "efConstruction": 200}
CREATE_WAIT = 30.0  # seconds another process's create of the same collection may take to finish
# pymilvus pings its channel every 10 s, calls open or not. A gRPC server on its default policy (Milvus Lite's, in
# this process or as `milvus-lite server`) accepts a ping at most every 5 minutes and none on an idle connection; it
# counts each early ping as a strike and at the third sends GOAWAY "too_many_pings", failing the calls in flight.
# Ping no more often than that policy allows (Milvus itself allows every 5 s, so this suits it too).
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 360_000, "grpc.keepalive_permit_without_calls": 0}


def document_filter(document_ids: list[str] | None) -> str:
    """A Milvus boolean expression restricting a search to these documents ('' for all)."""
    if document_ids is None:
        return ""
    quoted = ", ".join(f'"{d}"' for d in document_ids)  # ids are hex digests: nothing to escape
    return f"document_id in [{quoted}]"


class Collection(ABC):
    """A collection opened (created if missing, dropped first if `recreate`) and loaded on a dedicated client."""

    def __init__(self, uri: str, dim: int, collection: str, *, recreate: bool = False):
        from pymilvus import MilvusClient

        # pymilvus (on import) and Milvus Lite's in-process gRPC server log routine chatter, such as the
        # iterator's "failed to get mvccTs" fallback, that a command-line user should not see.
        logging.getLogger("pymilvus").setLevel(logging.ERROR)
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        self.uri = uri
        self.dim = dim
        self.collection = collection
        # A dedicated channel closes with this collection; a shared one would outlive it, keyed by the URI.
        self._client = MilvusClient(uri, grpc_options=GRPC_OPTIONS, dedicated=True)
        if recreate and self._client.has_collection(collection):
            self._client.drop_collection(collection)
        if not self._client.has_collection(collection):
            self._create()
        self._client.load_collection(collection)

    @abstractmethod
    def _schema(self):
        """(schema, index params) of a new collection."""

    def _create(self) -> None:
        from pymilvus import MilvusException

        schema, index = self._schema()
        try:
            self._client.create_collection(self.collection, schema=schema, index_params=index)
        except MilvusException:
            # Two processes opening a new store on one Milvus server both find no collection; the one that
            # creates it second fails, and uses the first one's (same schema) once the first create has finished:
            # Milvus Lite refuses the second while the first is still writing, before it lists the collection.
            deadline = time.monotonic() + CREATE_WAIT
            while not self._client.has_collection(self.collection):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uses_milvus_lite(self) -> bool:
        return self.uri.endswith(".db")

    def close(self) -> None:
        self._client.close()
        if self.uses_milvus_lite:
            # pymilvus starts an in-process Milvus Lite server for a folder and keeps it, and the folder locked, until
            # the process exits; stop it, so that closing the store frees it for other processes.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    def delete_version(self, document_id: str, version: str) -> None:
        # Both are hex digits (a digest and a token): nothing to escape.
        self._client.delete(self.collection, filter=f'document_id == "{document_id}" and version == "{version}"')

    def flush(self) -> None:
        self._client.flush(self.collection)
