"""The vision route end to end: `pagelens index --retriever text+colqwen --model TINY` stores each page image's
vectors beside the text routes, searches fuse them, a folder of photos without text is found by the vision route
alone, and mixing retrievers is refused without touching the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pagelens.training.tiny_model import build_tiny_colqwen2
from pagelens.tools.corpus.store import PageStore, StoreSettings
from pagelens.tools.search import Retriever
from pagelens.tools.retrieval.settings import RetrievalSettings

SHAPES = {"red_circle": "red", "blue_square": "blue", "green_triangle": "green"}


@pytest.fixture(scope="module")
def tiny_colqwen(tmp_path_factory) -> Path:
    return build_tiny_colqwen2(tmp_path_factory.mktemp("colqwen") / "tiny", vocabulary="small")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name, colour in SHAPES.items():
        image = Image.new("RGB", (640, 480), "white")
        draw = ImageDraw.Draw(image)
        if "circle" in name:
            draw.ellipse((200, 120, 440, 360), fill=colour)
        elif "square" in name:
            draw.rectangle((200, 120, 440, 360), fill=colour)
        else:
            draw.polygon([(320, 100), (520, 380), (120, 380)], fill=colour)
        image.save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def vision_home(tmp_path_factory, tiny_colqwen, photos, sample) -> Path:
    from pagelens.tools.corpus.ingest import index_paths

    home = tmp_path_factory.mktemp("vision") / "store"
    retrieval = RetrievalSettings(retriever="text+colqwen", vision_model=str(tiny_colqwen))
    with PageStore(StoreSettings(home=home), retrieval, choose_retriever=True) as store:
        report = index_paths(store, [photos, sample / "kx40_maintenance_manual.pdf"], progress=False)
    assert not report.failures and report.pages_indexed == 6
    return home


@pytest.mark.slow
def test_photos_without_text_are_found_by_the_vision_route_alone(cli, vision_home):
    pages = json.loads(cli("pages", "--json", home=vision_home).stdout)["pages"]
    assert len(pages) == 6
    hits = json.loads(cli("search", "a red circle on white", "-k", "6", "--json", home=vision_home).stdout)["hits"]
    photos = [hit for hit in hits if hit["document"].endswith(".png")]
    assert {hit["document"] for hit in photos} == {f"{name}.png" for name in SHAPES}
    for hit in photos:  # the text routes have nothing for a page with no text; the vision route ranks it
        assert set(hit["routes"]) == {"vision"} and hit["routes"]["vision"]["rank"] >= 1
    manual = [hit for hit in hits if hit["document"] == "kx40_maintenance_manual.pdf"]
    assert manual and all("vision" in hit["routes"] and len(hit["routes"]) > 1 for hit in manual)


@pytest.mark.slow
@pytest.mark.parametrize("memory_index", ["on", "off"])
def test_the_vision_route_scores_exact_maxsim_over_every_page_vector(vision_home, memory_index):
    # "on": the in-memory copy (Milvus Lite's default); "off": Milvus's own search, as on a Milvus server.
    retrieval = RetrievalSettings(memory_index=memory_index)
    with PageStore(StoreSettings(home=vision_home), retrieval) as store:  # the retriever comes from the manifest
        assert store.retrieval.retriever == "text+colqwen" and store.page_vectors is not None
        query = "blue square"
        ranking = Retriever(store).route_rankings(query, routes=["vision"])["vision"]
        q = store.page_embedder().embed_query(query)
        brute = {page_id: float((q @ vectors.T).max(axis=1).mean())
                 for page_id, _, _, vectors in store.page_vectors.pages()}
        assert len(brute) == 6 and all(len(v) > 1 for *_, v in store.page_vectors.pages())
    assert [page_id for page_id, _ in ranking] == sorted(brute, key=lambda p: (-brute[p], p))
    assert np.allclose([hit.score for _, hit in ranking], sorted(brute.values(), reverse=True), atol=1e-5)


@pytest.mark.slow
def test_removing_a_document_removes_its_page_vectors(cli, vision_home, tmp_path):
    import shutil

    home = tmp_path / "copy"
    shutil.copytree(vision_home, home)
    with PageStore(StoreSettings(home=home)) as store:
        before = store.page_vectors.count()
        circle = [d.document_id for d in store.documents() if d.name == "red_circle.png"]
        assert store.page_vectors.count(circle) > 0
        assert circle[0] in store.vision_index().document_ids  # the in-memory copy, saved under the store
    cli("remove", "red_circle.png", home=home)
    with PageStore(StoreSettings(home=home)) as store:
        assert store.page_vectors.count(circle) == 0 and 0 < store.page_vectors.count() < before
        assert circle[0] not in store.vision_index().document_ids  # caught up from the change log
    hits = json.loads(cli("search", "a red circle on white", "-k", "6", "--json", home=home).stdout)["hits"]
    assert "red_circle.png" not in {hit["document"] for hit in hits} and len(hits) == 5


@pytest.mark.slow
def test_mixing_retrievers_and_bad_checkpoints_are_refused_and_change_nothing(cli, vision_home, photos, tmp_path,
                                                                              tiny_qwen):
    manifest = (vision_home / "manifest.json").read_text()
    proc = cli("index", str(photos), "--retriever", "text", home=vision_home, check=False)
    assert proc.returncode == 2 and "retriever 'text+colqwen' (now 'text')" in proc.stderr
    assert "--rebuild" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (vision_home / "manifest.json").read_text() == manifest

    proc = cli("index", str(photos), "--model", "somewhere", home=tmp_path / "new", check=False)
    assert proc.returncode == 2 and "add --retriever" in proc.stderr
    proc = cli("index", str(photos), "--retriever", "colqwen", "--model", str(tmp_path / "missing"),
               home=tmp_path / "new", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = cli("index", str(photos), "--retriever", "colqwen", "--model", str(tiny_qwen), home=tmp_path / "new",
               check=False)
    assert proc.returncode == 2 and "not ColQwen2" in proc.stderr and "vlm retriever" in proc.stderr
    assert not (tmp_path / "new" / "manifest.json").exists()


@pytest.mark.slow
def test_calibrating_a_vision_store_fits_on_the_vision_route_score(cli, vision_home, tmp_path):
    import shutil

    home = tmp_path / "copy"
    shutil.copytree(vision_home, home)
    questions = tmp_path / "questions.jsonl"
    lines = [{"question": f"a {name.replace('_', ' ')} on white", "answers": [name],
              "pages": [{"document": f"{name}.png", "page": 1}]} for name in SHAPES]
    lines.append({"question": "What torque is specified for the KX-40 blade root bolts?", "answers": ["1850 Nm"],
                  "pages": [{"document": "kx40_maintenance_manual.pdf", "page": 2}]})
    lines.append({"question": "What is the boiling point of liquid helium?", "answers": [], "is_sufficient": False})
    questions.write_text("\n".join(json.dumps(line) for line in lines))
    model = json.loads(cli("calibrate", str(questions), "--k", "6", "--json", home=home).stdout)["model"]
    assert model["features"] == ["page_coverage", "passage_coverage", "similarity", "score", "gap", "z"]
    assert json.loads((home / "manifest.json").read_text())["relevance"] == model
    hits = json.loads(cli("search", "a blue square", "-k", "6", "--json", home=home).stdout)["hits"]
    vision = [hit for hit in hits if "vision" in hit["routes"]]
    assert len(vision) == 6  # MIRAGE's scores come from the vision route: its MaxSim, the gap to its best, its z
    for hit in vision:
        assert hit["evidence"]["score"] == pytest.approx(hit["routes"]["vision"]["score"], abs=1e-4)
    best = max(vision, key=lambda hit: hit["routes"]["vision"]["score"])
    assert best["evidence"]["gap"] == pytest.approx(0.0, abs=1e-4) and best["evidence"]["z"] > 0
