"""Page-image embedders (SPEC §6) over tiny random-weight checkpoints built offline once per module."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pagelens.errors import BadInputError
from pagelens.tools.retrieval.multivector import maxsim, normalised_maxsim
from pagelens.tools.retrieval.vision import (
    VISRAG_QUERY_PREFIX,
    ColQwen2Embedder,
    VLMEmbedder,
    last_token,
    mean_tokens,
    pixel_batches,
    pool_tokens,
    weighted_mean,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def colqwen(tmp_path_factory) -> dict:
    """A tiny ColQwen2 over each backbone, with the small vocabulary."""
    from pagelens.training.tiny_model import build_tiny_colqwen2

    return {backbone: build_tiny_colqwen2(tmp_path_factory.mktemp(f"colqwen2-{backbone}"), backbone=backbone,
                                          vocabulary="small")
            for backbone in ("qwen2-vl", "qwen2.5-vl")}


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from pagelens.training.tiny_model import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("policy"), vocabulary="small")


@pytest.fixture(scope="module")
def pages() -> list[Image.Image]:
    """Three pages of different sizes and modes, so a batch pads and the processor converts."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8))
    return [noise, Image.new("RGB", (100, 100), (1, 200, 10)), Image.new("L", (420, 120), 128)]


def _unit_rows(array: np.ndarray) -> None:
    assert array.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)


# --- the tiny checkpoints --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone,vlm_type", [("qwen2-vl", "qwen2_vl"), ("qwen2.5-vl", "qwen2_5_vl")])
def test_tiny_colqwen2_reloads_through_the_auto_classes(colqwen, backbone, vlm_type, monkeypatch):
    from transformers import (AutoConfig, AutoModelForPreTraining, AutoProcessor, ColQwen2ForRetrieval,
                              ColQwen2Processor)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = colqwen[backbone]
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "colqwen2" and config.vlm_config.model_type == vlm_type
    assert config.embedding_dim == 128
    model = AutoModelForPreTraining.from_pretrained(folder)  # transformers maps no AutoModel to ColQwen2
    assert isinstance(model, ColQwen2ForRetrieval)
    again = ColQwen2ForRetrieval.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, ColQwen2Processor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessorPil)  # the PIL one: no torchvision
    assert processor.image_processor.size["longest_edge"] == 768 * 28 * 28
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == config.vlm_config.image_token_id


def test_tiny_colqwen2_is_deterministic_per_seed(tmp_path):
    from safetensors.numpy import load_file

    from pagelens.training.tiny_model import build_tiny_colqwen2

    a = load_file(build_tiny_colqwen2(tmp_path / "a", vocabulary="small") / "model.safetensors")
    b = load_file(build_tiny_colqwen2(tmp_path / "b", vocabulary="small") / "model.safetensors")
    c = load_file(build_tiny_colqwen2(tmp_path / "c", vocabulary="small", seed=1) / "model.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    with pytest.raises(BadInputError, match="backbone 'qwen3-vl' is not known"):
        build_tiny_colqwen2(tmp_path / "d", backbone="qwen3-vl")  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()


# --- ColQwen2 ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["qwen2-vl", "qwen2.5-vl"])
def test_colqwen2_pages_have_one_unit_vector_per_real_token(colqwen, backbone, pages):
    embedder = ColQwen2Embedder(colqwen[backbone], batch_size=2)
    assert embedder.multi_vector and embedder.dim == 128
    vectors = embedder.embed_pages(pages)
    _, processor = embedder._load()
    assert len(vectors) == len(pages)
    for page, array in zip(pages, vectors):
        alone = processor.process_images([page.convert("RGB")])  # one page: no padding at all
        assert array.shape == (int(alone["attention_mask"].sum()), 128)
        _unit_rows(array)  # padding rows would be all zero
    assert len({array.shape[0] for array in vectors}) == 3  # so the batch of two really padded one of them

    one_by_one = [embedder.embed_pages([page])[0] for page in pages]
    for together, alone in zip(vectors, one_by_one):
        np.testing.assert_allclose(together, alone, atol=1e-4)
    assert embedder.embed_pages([]) == []


def test_colqwen2_query_and_scores(colqwen, pages):
    embedder = ColQwen2Embedder(colqwen["qwen2.5-vl"])
    query = embedder.embed_query("What is the revenue in 2023?")
    _, processor = embedder._load()
    expected = int(processor.process_queries(["What is the revenue in 2023?"])["attention_mask"].sum())
    assert query.shape == (expected, 128)  # "Query: …" plus ten augmentation tokens, all kept
    _unit_rows(query)
    page = embedder.embed_pages(pages[:1])[0]
    brute = sum(max(float(np.dot(q, p)) for p in page) for q in query)
    assert maxsim(query, page) == pytest.approx(brute, rel=1e-5)
    assert normalised_maxsim(query, page) == pytest.approx(brute / len(query), rel=1e-5)


def test_colqwen2_max_pixels_caps_the_page_tokens(colqwen):
    big = Image.new("RGB", (1000, 1400), (255, 255, 255))
    full = ColQwen2Embedder(colqwen["qwen2.5-vl"]).embed_pages([big])[0]
    capped = ColQwen2Embedder(colqwen["qwen2.5-vl"], max_pixels=16 * 28 * 28).embed_pages([big])[0]
    assert len(full) - len(capped) >= 700  # 768 visual tokens against at most 16
    assert len(capped) <= 16 + 30


def test_pixel_batches_bound_pages_and_pixels():
    assert pixel_batches([10, 40, 20, 40], batch_size=2, batch_pixels=60) == [[0, 2], [1], [3]]
    assert pixel_batches([10, 10, 10, 10, 10], batch_size=2, batch_pixels=1000) == [[0, 1], [2, 3], [4]]
    assert pixel_batches([500, 10], batch_size=4, batch_pixels=100) == [[1], [0]]  # an oversized page goes alone
    assert pixel_batches([], batch_size=4, batch_pixels=100) == []


# --- one-vector VLM embedders -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["wmean", "last", "mean"])
def test_vlm_embedder_gives_one_unit_vector_per_page_and_query(policy, pages, pooling):
    embedder = VLMEmbedder(policy, pooling=pooling, batch_size=2)
    assert not embedder.multi_vector and embedder.dim == 64
    vectors = embedder.embed_pages(pages)
    assert [v.shape for v in vectors] == [(1, 64)] * 3
    for array in vectors:
        _unit_rows(array)
    alone = embedder.embed_pages(pages[1:2])[0]
    np.testing.assert_allclose(vectors[1], alone, atol=1e-4)  # padding in a batch changes nothing
    query = embedder.embed_query("maintenance interval of the pump")
    assert query.shape == (1, 64)
    _unit_rows(query)
    assert maxsim(query, vectors[0]) == pytest.approx(float(query[0] @ vectors[0][0]), rel=1e-5)


def test_vlm_wmean_query_is_visrag_prefix_weighted_mean(policy):
    embedder = VLMEmbedder(policy, pooling="wmean")
    model, tokenizer, _ = embedder._load()
    ids = tokenizer([VISRAG_QUERY_PREFIX + "pump"], return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        hidden = model(**ids).last_hidden_state[0]  # (T, D)
    weights = torch.arange(1, hidden.shape[0] + 1, dtype=hidden.dtype)  # no padding: 1, 2, …, T
    expected = (hidden * weights[:, None]).sum(0) / weights.sum()
    expected = (expected / expected.norm()).numpy()
    np.testing.assert_allclose(embedder.embed_query("pump")[0], expected, atol=1e-5)
    braces = VLMEmbedder(policy, query_prefix="{not a field} ")
    assert not np.allclose(braces.embed_query("pump"), embedder.embed_query("pump"))


def test_pooling_weights_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]],
                           [[100.0, 100.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (2, 4, 2)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])  # right padding, left padding
    # weights mask * cumsum(mask) = 1, 2, 3 over the real tokens: (1·[1,0] + 2·[0,1] + 3·[1,1]) / 6 = [4, 5] / 6
    expected = np.array([4.0, 5.0]) / np.sqrt(41.0)
    np.testing.assert_allclose(weighted_mean(hidden, mask).numpy(), [expected, expected], atol=1e-6)
    np.testing.assert_allclose(last_token(hidden, mask).numpy(), [[2 ** -0.5, 2 ** -0.5]] * 2, atol=1e-6)
    np.testing.assert_allclose(mean_tokens(hidden, mask).numpy(), [[2 ** -0.5, 2 ** -0.5]] * 2, atol=1e-6)
    # the plain mean of [1,0], [0,1], [1,0] is [2, 1] / 3, where the weighted mean leans to the last token
    uneven = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    ones = torch.ones(1, 3, dtype=torch.long)
    np.testing.assert_allclose(mean_tokens(uneven, ones).numpy()[0], np.array([2.0, 1.0]) / np.sqrt(5), atol=1e-6)
    np.testing.assert_allclose(weighted_mean(uneven, ones).numpy()[0], np.array([4.0, 2.0]) / np.sqrt(20), atol=1e-6)


# --- MaxSim and token pooling --------------------------------------------------------------------------------------

def test_maxsim_matches_a_brute_force():
    rng = np.random.default_rng(1)
    query, page = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(11, 8)).astype(np.float32)
    brute = sum(max(float(np.dot(q, p)) for p in page) for q in query)
    assert maxsim(query, page) == pytest.approx(brute, rel=1e-5)
    assert normalised_maxsim(query, page) == pytest.approx(brute / 5, rel=1e-5)


def test_pool_tokens_merges_tight_clusters_into_their_normalised_means():
    rng = np.random.default_rng(2)
    centres = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    vectors = np.concatenate([c + 0.01 * rng.normal(size=(3, 4)) for c in centres])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)  # 6 unit vectors
    pooled = pool_tokens(vectors[[0, 3, 1, 4, 2, 5]], factor=3)  # interleaved: clusters are found, not read off
    expected = np.stack([vectors[:3].mean(0), vectors[3:].mean(0)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert pooled.shape == (2, 4) and pooled.dtype == np.float32
    order = np.argsort(pooled[:, 0])[::-1]  # the cluster near axis 0 first
    np.testing.assert_allclose(pooled[order], expected, atol=1e-6)


def test_pool_tokens_edges():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(10, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert pool_tokens(vectors, factor=3).shape[0] <= 3
    np.testing.assert_array_equal(pool_tokens(vectors, factor=1), vectors)
    np.testing.assert_array_equal(pool_tokens(vectors[:1]), vectors[:1])
    assert pool_tokens(vectors[:2], factor=3).shape == (1, 4)  # fewer than factor: one pooled vector
    with pytest.raises(BadInputError, match="pool factor 0"):
        pool_tokens(vectors, factor=0)
    with pytest.raises(BadInputError, match="pool each page on its own"):
        pool_tokens(vectors[None])


# --- wrong inputs -------------------------------------------------------------------------------------------------

def test_wrong_checkpoints_are_one_sentence_naming_the_path_and_the_fix(tmp_path, colqwen, policy):
    missing = tmp_path / "nowhere"
    with pytest.raises(BadInputError, match="does not exist") as info:
        ColQwen2Embedder(missing)
    assert str(missing) in str(info.value) and "pagelens tiny-model colqwen2" in str(info.value)
    with pytest.raises(BadInputError, match="does not exist"):
        VLMEmbedder(missing)

    with pytest.raises(BadInputError, match="is a qwen2_5_vl checkpoint, not ColQwen2.*use the vlm retriever") as info:
        ColQwen2Embedder(policy)
    assert str(policy) in str(info.value) and str(info.value).endswith(".") and ". " not in str(info.value)
    with pytest.raises(BadInputError, match="is a colqwen2 checkpoint, not Qwen2-VL.*use the colqwen retriever"):
        VLMEmbedder(colqwen["qwen2.5-vl"])

    text_model = tmp_path / "minilm"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    with pytest.raises(BadInputError, match="is a bert checkpoint"):
        ColQwen2Embedder(text_model)
    with pytest.raises(BadInputError, match="is a bert checkpoint"):
        VLMEmbedder(text_model)

    adapter = tmp_path / "colqwen2-v1.0"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(BadInputError, match="PEFT adapter"):
        ColQwen2Embedder(adapter)
    with pytest.raises(BadInputError, match="no config.json"):
        ColQwen2Embedder(tmp_path)
    with pytest.raises(BadInputError, match="pooling 'max' is not known"):
        VLMEmbedder(policy, pooling="max")  # type: ignore[arg-type]


# --- the CLI -------------------------------------------------------------------------------------------------------

@pytest.mark.slow  # four `pagelens` processes: about 20 s
def test_tiny_model_command_writes_a_colqwen2_that_reloads(cli, tmp_path):
    proc = cli("tiny-model", "colqwen2", str(tmp_path / "col"))  # the real Qwen2 vocabulary: 56 MB, a few seconds
    assert f"to {tmp_path / 'col'}" in proc.stdout and "qwen2.5-vl backbone" in proc.stdout
    proc = cli("tiny-model", "colqwen2", str(tmp_path / "col2"), "--vocab", "small", "--backbone", "qwen2-vl")
    assert "qwen2-vl backbone" in proc.stdout
    from transformers import AutoProcessor, ColQwen2ForRetrieval

    model = ColQwen2ForRetrieval.from_pretrained(tmp_path / "col2", local_files_only=True)
    assert model.config.vlm_config.model_type == "qwen2_vl"
    assert type(AutoProcessor.from_pretrained(tmp_path / "col2", local_files_only=True)).__name__ == "ColQwen2Processor"
    embedder = ColQwen2Embedder(tmp_path / "col")
    assert embedder.embed_query("pump").shape[1] == 128
    assert len(embedder._load()[1].tokenizer) == 151643 + 22  # SPEC §8: the real vocabulary and its added tokens

    proc = cli("tiny-model", "qwen2.5-vl", str(tmp_path / "bad"), "--backbone", "qwen2-vl", check=False)
    assert proc.returncode == 2 and "--backbone applies to colqwen2" in proc.stderr
    proc = cli("tiny-model", "colqwen2", str(tmp_path / "bad"), "--hidden-size", "128", check=False)
    assert proc.returncode == 2 and "leave them out for colqwen2" in proc.stderr
    assert not (tmp_path / "bad").exists()
