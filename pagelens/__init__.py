"""pagelens: visual retrieval-augmented generation over page images.

`import pagelens` stays light: the public API is re-exported lazily, so nothing heavy
(torch, Milvus) loads until it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pagelens.errors import (
    BadInputError,
    DependencyError,
    NotFoundError,
    PageLensError,
    PolicyError,
    StoreError,
)

__version__ = "0.1.0"

_LAZY = {
    "Box": "pagelens.tools.boxes",
    "Region": "pagelens.tools.boxes",
    "Page": "pagelens.tools.pages",
    "Document": "pagelens.tools.pages",
    "TextLine": "pagelens.tools.pages",
    "Hit": "pagelens.tools.search",
    "PageStore": "pagelens.tools.corpus.store",
    "StoreSettings": "pagelens.tools.corpus.store",
    "index_paths": "pagelens.tools.corpus.ingest",
    "Retriever": "pagelens.tools.search",
    "RetrievalSettings": "pagelens.tools.retrieval.settings",
    "crop": "pagelens.tools.regions",
}

__all__ = [
    "BadInputError",
    "DependencyError",
    "NotFoundError",
    "PageLensError",
    "PolicyError",
    "StoreError",
    "__version__",
    *_LAZY,
]

if TYPE_CHECKING:
    from pagelens.tools.corpus.ingest import index_paths
    from pagelens.tools.corpus.store import PageStore, StoreSettings
    from pagelens.tools.boxes import Box, Region
    from pagelens.tools.pages import Document, Page, TextLine
    from pagelens.tools.regions import crop
    from pagelens.tools.search import Hit, Retriever
    from pagelens.tools.retrieval.settings import RetrievalSettings


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagelens' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
