"""Page-image embedders: retrievers that look at the page image rather than its text (SPEC §6).

`PageImageEmbedder` is the interface: `embed_pages` gives each page an (n_i, dim) float32 array of L2-normalised
vectors, `embed_query` a query's (m, dim) array; `multi_vector` says whether n and m vary (late interaction, scored
with `multivector.maxsim`) or are 1 (one pooled vector, scored with a dot product, which MaxSim then equals).

- `ColQwen2Embedder`: ColPali-style multi-vector retrieval with transformers' own `ColQwen2ForRetrieval` and
  `ColQwen2Processor` (no colpali-engine, which needs torchvision). One 128-d vector per non-padding token; the
  padding rows the model zeroes are dropped through the attention mask.
- `VLMEmbedder`: one vector per page and per query from a Qwen2-VL / Qwen2.5-VL backbone's last hidden states.
  `wmean` is VisRAG-Ret's weighted mean with its query prefix (SPEC §6); VisRAG-Ret itself is MiniCPM-V with remote
  code and is not loaded here, only its pooling. `last` is DSE's last token (DSE also gives each query a dummy
  1×1 image; here queries are text only). `mean` is the plain mean.
- `pool_tokens`: colpali-engine's hierarchical token pooling.

Both embedders run on the CPU in float32 with the PIL image processor. Where `torch.cuda.is_available()` they run
on the GPU in bfloat16; that path is untested here. Batches are bounded in memory by page count and by pixels
(colpali issue #87: batched page encoding running out of memory): padding makes every page of a batch as long
as its largest, so a batch's cost is counted as its page count times its largest page's pixels after resizing.
Checkpoints load from a local folder only; nothing is downloaded.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from pagelens.errors import BadInputError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from pagelens.tools.retrieval.settings import RetrievalSettings

# ColQwen2's page budget in colpali-engine: 768 visual tokens of 28×28 pixels (after the 2×2 merge).
DEFAULT_MAX_PIXELS = 768 * 28 * 28
VISRAG_QUERY_PREFIX = "Represent this query for retrieving relevant documents: "  # SPEC §6
_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
_VISION = "<|vision_start|><|image_pad|><|vision_end|>"
Pooling = Literal["wmean", "last", "mean"]


class PageImageEmbedder(Protocol):
    name: str
    dim: int
    multi_vector: bool

    def embed_pages(self, images: list[Image.Image]) -> list[np.ndarray]:
        """One (n_i, dim) float32 array of L2-normalised vectors per page, in the order given."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """(m, dim) float32, L2-normalised rows."""
        ...


# --- scores and pooling ----------------------------------------------------------------------------------------

def pool_tokens(vectors: np.ndarray, factor: int = 3) -> np.ndarray:
    """Hierarchical token pooling (SPEC §6), as colpali-engine's HierarchicalTokenPooler does it: Ward clustering of
    a page's (n, d) unit vectors into n // factor clusters (at least 1), each cluster's mean re-normalised.

    As colpali-engine does, each vector is clustered by its row of cosine distances to all the page's vectors (the
    (n, n) matrix 1 - V·Vᵀ taken as features, Euclidean Ward), not by the vector itself. Clusters come out in
    scipy's label order; fewer than n // factor come out when the linkage cannot separate that many.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise BadInputError(f"token pooling takes one page's (n, d) vectors, not an array of shape {vectors.shape}; "
                            f"pool each page on its own.")
    if factor < 1:
        raise BadInputError(f"pool factor {factor} is not a positive integer; give for example 3 (SPEC §6).")
    n = len(vectors)
    if factor == 1 or n <= 1:
        return vectors.copy()
    distances = 1.0 - vectors.astype(np.float64) @ vectors.T.astype(np.float64)  # (n, n)
    tree = linkage(distances, method="ward", metric="euclidean")
    labels = fcluster(tree, t=max(n // factor, 1), criterion="maxclust")  # (n,) in 1..k
    pooled = np.stack([vectors[labels == label].mean(axis=0) for label in np.unique(labels)])  # (k, d)
    return _unit(pooled)


def weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """VisRAG-Ret's pooling (SPEC §6): the mean of the last hidden states (B, T, D) weighted by mask * cumsum(mask),
    so later non-padding tokens weigh more, then L2-normalised. (B, D)."""
    import torch

    mask = mask.to(hidden.dtype)  # (B, T)
    weights = mask * mask.cumsum(dim=1)  # (B, T): 1, 2, 3, … over the non-padding tokens, 0 on padding
    pooled = (hidden * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1, keepdim=True)  # (B, D)
    return torch.nn.functional.normalize(pooled, dim=-1)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DSE's pooling: the hidden state of the last non-padding token (left or right padding), L2-normalised. (B, D)"""
    import torch

    positions = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    last = (mask.to(torch.long) * (positions + 1)).argmax(dim=1)  # (B,): the largest position whose mask is 1
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)
    return torch.nn.functional.normalize(pooled, dim=-1)


def mean_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The plain mean of the non-padding tokens' hidden states, L2-normalised. (B, D)"""
    import torch

    mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B, D)
    return torch.nn.functional.normalize(pooled, dim=-1)


POOLINGS = {"wmean": weighted_mean, "last": last_token, "mean": mean_tokens}


# --- the embedders ---------------------------------------------------------------------------------------------

class ColQwen2Embedder:
    """Multi-vector page embeddings from a local ColQwen2 / ColQwen2.5 checkpoint in transformers' format (for
    example vidore/colqwen2-v1.0-hf, or one written by `pagelens tiny-model colqwen2 OUT`), loaded on first use.

    `max_pixels` caps each page's size before encoding (default 768 visual tokens; None keeps the checkpoint's own
    cap); `batch_pixels` caps a batch (default `batch_size` pages of `max_pixels`, or of 768 tokens without a cap).
    On a GPU (`device` "cuda", or None where CUDA is available) it runs in bfloat16: untested here.
    """

    multi_vector = True

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 4,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, batch_pixels: int | None = None):
        self.path = Path(path)
        config = _checkpoint_config(self.path, "ColQwen2", {"colqwen2"},
                                    "give a ColQwen2 checkpoint folder in transformers' format (such as "
                                    "vidore/colqwen2-v1.0-hf, or one written by `pagelens tiny-model colqwen2 OUT`)"
                                    "; for a Qwen2-VL or Qwen2.5-VL backbone use the vlm retriever")
        self.dim = int(config.get("embedding_dim", 128))
        self.name = f"colqwen2:{self.path.name}"
        self._run = _Runner(device, batch_size, max_pixels, batch_pixels)
        self._lock = threading.Lock()
        self._model = self._processor = None

    def _load(self):
        with self._lock:
            if self._model is None:
                from transformers import AutoProcessor, ColQwen2ForRetrieval, logging as hf_logging

                hf_logging.set_verbosity_error()
                hf_logging.disable_progress_bar()
                # the PIL image processor everywhere, even beside torchvision: pages indexed on a GPU and queries
                # embedded on a CPU then see the same pixels
                self._processor = AutoProcessor.from_pretrained(self.path, backend="pil", local_files_only=True)
                self._model = self._run.place(ColQwen2ForRetrieval.from_pretrained(
                    self.path, local_files_only=True, dtype=self._run.dtype))
        return self._model, self._processor

    def embed_pages(self, images: list[Image.Image]) -> list[np.ndarray]:
        import torch

        model, processor = self._load()
        image_processor = processor.image_processor
        size = self._run.size(image_processor)
        out: list[np.ndarray | None] = [None] * len(images)
        for batch in self._run.batches(images, image_processor, size):
            inputs = processor.process_images([images[i].convert("RGB") for i in batch], size=size)
            with torch.inference_mode():
                embeddings = model(**self._run.to_device(inputs)).embeddings  # (B, T, dim), padding rows zeroed
            keep = inputs["attention_mask"].bool()  # (B, T)
            for row, i in enumerate(batch):
                out[i] = embeddings[row][keep[row].to(embeddings.device)].float().cpu().numpy()
        return out  # type: ignore[return-value]

    def embed_query(self, text: str) -> np.ndarray:
        import torch

        model, processor = self._load()
        inputs = processor.process_queries([text])
        with torch.inference_mode():
            embeddings = model(**self._run.to_device(inputs)).embeddings  # (1, T, dim)
        keep = inputs["attention_mask"][0].bool().to(embeddings.device)
        return embeddings[0][keep].float().cpu().numpy()


class VLMEmbedder:
    """One vector per page and per query from a local Qwen2-VL or Qwen2.5-VL checkpoint (a DSE checkpoint such as
    MrLight/dse-qwen2-2b-mrl-v1, a policy, or `pagelens tiny-model qwen2.5-vl OUT`), loaded on first use.

    `pooling`: "wmean" (VisRAG-Ret, SPEC §6), "last" (DSE) or "mean". Pages are encoded as the image alone
    (wmean, mean; VisRAG-Ret's empty text) or in DSE's chat prompt (last); queries carry VisRAG-Ret's prefix or
    DSE's "Query: ". `query_prefix` overrides the prefix. Vectors have the text model's width; returned as (1, dim).
    Sizes, batching and the GPU path as for `ColQwen2Embedder`.
    """

    multi_vector = False

    def __init__(self, path: str | Path, pooling: Pooling = "wmean", device: str | None = None, batch_size: int = 4,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, batch_pixels: int | None = None,
                 query_prefix: str | None = None):
        if pooling not in POOLINGS:
            raise BadInputError(f"pooling {pooling!r} is not known; use 'wmean', 'last' or 'mean'.")
        self.path = Path(path)
        config = _checkpoint_config(self.path, "Qwen2-VL", {"qwen2_vl", "qwen2_5_vl"},
                                    "give a Qwen2-VL or Qwen2.5-VL checkpoint folder (such as a DSE checkpoint, or "
                                    "one written by `pagelens tiny-model qwen2.5-vl OUT`); for a ColQwen2 "
                                    "checkpoint use the colqwen retriever")
        width = (config.get("text_config") or {}).get("hidden_size") or config.get("hidden_size")
        if not width:
            raise BadInputError(f"{self.path / 'config.json'} names no hidden_size; give a complete Qwen2-VL or "
                                f"Qwen2.5-VL checkpoint folder.")
        self.dim = int(width)
        self.pooling = pooling
        self.name = f"vlm-{pooling}:{self.path.name}"
        if pooling == "last":  # DSE's prompts, as Qwen2-VL's chat template writes them
            self._page = f"{_SYSTEM}<|im_start|>user\n{_VISION}What is shown in this image?<|im_end|>\n" \
                         f"<|im_start|>assistant\n<|endoftext|>"
            prefix = "Query: " if query_prefix is None else query_prefix
            self._query = (f"{_SYSTEM}<|im_start|>user\n{prefix}", "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")
        else:  # VisRAG-Ret: the page image with empty text; the query with its prefix (SPEC §6)
            self._page = _VISION
            self._query = (VISRAG_QUERY_PREFIX if query_prefix is None else query_prefix, "")
        self._run = _Runner(device, batch_size, max_pixels, batch_pixels)
        self._lock = threading.Lock()
        self._model = self._tokenizer = self._image_processor = None

    def _load(self):
        with self._lock:
            if self._model is None:
                from transformers import AutoModel, AutoTokenizer, logging as hf_logging
                from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

                hf_logging.set_verbosity_error()
                hf_logging.disable_progress_bar()
                self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                has_config = (self.path / "preprocessor_config.json").is_file()
                self._image_processor = (Qwen2VLImageProcessorPil.from_pretrained(self.path, local_files_only=True)
                                         if has_config else Qwen2VLImageProcessorPil())
                # the base model (no language-model head): its last_hidden_state is what the poolings read
                self._model = self._run.place(AutoModel.from_pretrained(self.path, local_files_only=True,
                                                                        dtype=self._run.dtype))
        return self._model, self._tokenizer, self._image_processor

    def embed_pages(self, images: list[Image.Image]) -> list[np.ndarray]:
        model, tokenizer, image_processor = self._load()
        size = self._run.size(image_processor)
        merge = image_processor.merge_size ** 2
        out: list[np.ndarray | None] = [None] * len(images)
        for batch in self._run.batches(images, image_processor, size):
            pixels = image_processor([images[i].convert("RGB") for i in batch], size=size, return_tensors="pt")
            # each <|image_pad|> becomes one pad per merged patch, as the Qwen2-VL processor does
            texts = [self._page.replace("<|image_pad|>", "<|image_pad|>" * (int(grid.prod()) // merge))
                     for grid in pixels["image_grid_thw"]]
            vectors = self._pooled(texts, pixel_values=pixels["pixel_values"],
                                   image_grid_thw=pixels["image_grid_thw"])
            for row, i in enumerate(batch):
                out[i] = vectors[row : row + 1]
        return out  # type: ignore[return-value]

    def embed_query(self, text: str) -> np.ndarray:
        before, after = self._query
        return self._pooled([before + text + after])

    def _pooled(self, texts: list[str], **vision: Any) -> np.ndarray:
        import torch

        model, tokenizer, _ = self._load()
        inputs = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            hidden = model(**self._run.to_device({**inputs, **vision})).last_hidden_state  # (B, T, D)
            pooled = POOLINGS[self.pooling](hidden.float(), inputs["attention_mask"].to(hidden.device))  # (B, D)
        return pooled.cpu().numpy()


# --- shared plumbing -------------------------------------------------------------------------------------------

class _Runner:
    """Device, dtype, page size and batching shared by the embedders."""

    def __init__(self, device: str | None, batch_size: int, max_pixels: int | None, batch_pixels: int | None):
        import torch

        if batch_size < 1:
            raise BadInputError(f"batch size {batch_size} is not a positive integer; give for example 4.")
        if max_pixels is not None and max_pixels < 56 * 56:
            raise BadInputError(f"max_pixels {max_pixels} is below one 56×56 patch group; give at least 3136, for "
                                f"example {DEFAULT_MAX_PIXELS} (768 visual tokens).")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.batch_pixels = batch_pixels or batch_size * (max_pixels or DEFAULT_MAX_PIXELS)

    def place(self, model):
        return model.to(self.device).eval()

    def to_device(self, inputs) -> dict:
        import torch

        return {key: value.to(self.device, dtype=self.dtype if value.is_floating_point() else None)
                if isinstance(value, torch.Tensor) else value for key, value in dict(inputs).items()}

    def size(self, image_processor) -> dict[str, int]:
        """The processor's resize bounds with our `max_pixels` as the upper one."""
        own = image_processor.size
        shortest, longest = own["shortest_edge"], own["longest_edge"]
        return {"shortest_edge": shortest, "longest_edge": self.max_pixels or longest}

    def batches(self, images: list[Image.Image], image_processor, size: dict[str, int]) -> list[list[int]]:
        """Page indices in batches of at most `batch_size` pages whose count × largest resized area stays within
        `batch_pixels` (a larger page goes alone); pages are sorted by area so that padding stays small."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        factor = image_processor.patch_size * image_processor.merge_size
        areas = []
        for image in images:
            h, w = smart_resize(image.height, image.width, factor=factor, min_pixels=size["shortest_edge"],
                                max_pixels=size["longest_edge"])
            areas.append(h * w)
        return pixel_batches(areas, self.batch_size, self.batch_pixels)


def pixel_batches(areas: list[int], batch_size: int, batch_pixels: int) -> list[list[int]]:
    """Indices of `areas` in batches of at most `batch_size`, each with len × max area <= `batch_pixels` (a page over
    the budget alone), smallest areas first."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(areas)), key=lambda i: areas[i]):
        # sorted ascending, so the page being added is the batch's largest
        if current and (len(current) == batch_size or (len(current) + 1) * areas[i] > batch_pixels):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _checkpoint_config(path: Path, kind: str, model_types: set[str], fix: str) -> dict:
    """The checkpoint's config.json, checked to be of one of `model_types` before torch loads anything."""
    if not path.is_dir():
        raise BadInputError(f"{kind} checkpoint folder {path} does not exist; {fix} (nothing is downloaded).")
    config_file = path / "config.json"
    if not config_file.is_file():
        if (path / "adapter_config.json").is_file():
            raise BadInputError(f"{path} holds a PEFT adapter (colpali-engine's format), not a transformers "
                                f"checkpoint; {fix}.")
        raise BadInputError(f"{path} has no config.json, so it is not a transformers checkpoint; {fix}.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadInputError(f"{config_file} is not valid JSON; {fix}.") from None
    model_type = config.get("model_type")
    if model_type not in model_types:
        raise BadInputError(f"{path} is a {model_type or 'unknown'} checkpoint, not {kind}; {fix}.")
    return config


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)



def make_page_embedder(settings: RetrievalSettings) -> PageImageEmbedder:
    """The embedder of the settings' vision retriever ("colqwen" or "vlm"), loaded on first use."""
    if settings.vision == "colqwen":
        return ColQwen2Embedder(settings.vision_model)
    if settings.vision == "vlm":
        return VLMEmbedder(settings.vision_model, pooling=settings.vision_pooling)  # type: ignore[arg-type]
    raise BadInputError(f"the {settings.retriever} retriever does not look at page images; index with "
                        f"`--retriever text+colqwen --model PATH` (or colqwen, vlm, text+vlm) for one that does.")
