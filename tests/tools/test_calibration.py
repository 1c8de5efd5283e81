"""`pagelens calibrate` fits a store's relevance model over its retriever's scores and keeps it in the manifest;
searches then judge pages by it, and the relevance filter keeps the pages it says support an answer (MIRAGE)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pagelens.errors import BadInputError
from pagelens.tools.retrieval.relevance import FEATURES, RelevanceModel, features_for, keep_relevant, route_features

SAMPLE_QUESTIONS = Path(__file__).resolve().parents[2] / "servers" / "sample" / "questions.jsonl"


def test_route_features_and_the_filter_by_hand():
    (s1, g1, z1), (s2, g2, z2), (s3, g3, z3) = route_features([0.9, 0.6, 0.3])
    assert (s1, g1, g2, g3) == pytest.approx((0.9, 0.0, 0.3, 0.6))
    assert (z1, z2, z3) == pytest.approx((1.2247449, 0.0, -1.2247449))
    assert route_features([0.5, 0.5]) == [(0.5, 0.0, 0.0), (0.5, 0.0, 0.0)]  # no spread: z 0, not a division by 0
    # A page's features come from the candidate list's statistics, whichever other pages are asked about.
    assert route_features([0.9, 0.6, 0.3], [0.3]) == [(s3, g3, z3)]
    assert keep_relevant([0.2, 0.7, 0.9, 0.6], 0.5, 2) == [1, 2]  # rank order, at most k
    assert keep_relevant([0.2, 0.4, 0.1], 0.5, 3) == [1]  # none passes: the most probable alone
    assert keep_relevant([], 0.5, 3) == []
    assert features_for("text") == FEATURES and features_for("colqwen") == ("score", "gap", "z")
    assert features_for("text+vlm") == FEATURES
    with pytest.raises(BadInputError, match="one weight per score"):
        RelevanceModel((1.0,), 0.0, 0.5, ("score", "gap"))
    with pytest.raises(BadInputError, match="pagelens calibrate"):
        RelevanceModel.from_manifest({"weights": [1.0]})


@pytest.mark.slow
def test_calibrate_fits_keeps_and_takes_over_the_relevance_model(cli, sample_copy):
    before = json.loads((sample_copy / "manifest.json").read_text())
    assert "relevance" not in before
    out = json.loads(cli("calibrate", str(SAMPLE_QUESTIONS), "--json", home=sample_copy).stdout)
    model = out["model"]
    assert model["features"] == list(FEATURES) and model["threshold"] == 0.5 and len(model["weights"]) == 6
    assert out["positives"] >= 15 and out["negatives"] > out["positives"]
    assert out["answerable_kept"] >= 0.8 and 0 <= out["unanswerable_refused"] <= 1
    after = json.loads((sample_copy / "manifest.json").read_text())
    assert after["relevance"] == model and {k: v for k, v in after.items() if k != "relevance"} == before

    # Searches now judge pages by the fitted model, from the scores each hit shows.
    query = "What torque is specified for the KX-40 blade root bolts?"
    hits = json.loads(cli("search", query, "-k", "3", "--json", home=sample_copy).stdout)["hits"]
    for hit in hits:
        z = sum(w * hit["evidence"][f] for w, f in zip(model["weights"], model["features"])) + model["bias"]
        assert hit["relevance"] == pytest.approx(1 / (1 + math.exp(-z)), abs=2e-3)
        assert hit["supported"] == (hit["relevance"] >= 0.5)
    assert hits[0]["evidence"]["gap"] == pytest.approx(0.0, abs=1e-4) or hits[0]["evidence"]["gap"] >= 0

    # The filter: every candidate's decision is shown; kept pages reach the threshold (or the most probable alone).
    found = json.loads(cli("search", query, "-k", "3", "--filter", "--json", home=sample_copy).stdout)
    candidates = found["filter"]["candidates"]
    kept = [c for c in candidates if c["kept"]]
    assert [h["page_id"] for h in found["hits"]] == [c["page_id"] for c in kept] and 1 <= len(kept) <= 3
    passing = [c for c in candidates if c["relevance"] >= 0.5]
    if passing:
        assert kept == passing[:3]
    else:
        assert kept == [max(candidates, key=lambda c: c["relevance"])]
    text = cli("search", query, "--filter", home=sample_copy).stdout
    assert f"kept {len(kept)} of {len(candidates)} candidate page(s)" in text


@pytest.mark.slow
def test_bad_question_files_are_refused_and_the_manifest_is_untouched(cli, sample_copy, tmp_path):
    manifest = (sample_copy / "manifest.json").read_text()
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question": "q?", "answers": ["a"], "pages": [{"document": "nope.pdf", "page": 1}]}))
    proc = cli("calibrate", str(missing), home=sample_copy, check=False)
    assert proc.returncode == 2 and "'nope.pdf'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    unanswerable = tmp_path / "unanswerable.jsonl"
    unanswerable.write_text(json.dumps({"question": "What is the boiling point of helium?", "answers": [],
                                        "is_sufficient": False}))
    proc = cli("calibrate", str(unanswerable), home=sample_copy, check=False)
    assert proc.returncode == 2 and "calibration needs pages that support an answer" in proc.stderr
    assert (sample_copy / "manifest.json").read_text() == manifest
