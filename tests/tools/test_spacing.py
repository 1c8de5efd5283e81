"""Putting back the spaces OCR drops, without breaking numbers or names."""

from __future__ import annotations

import pytest

from pagelens.tools.corpus.spacing import respace


@pytest.mark.parametrize("raw, spaced", [
    # punctuation, digits and case boundaries
    ("May2,2024", "May 2, 2024"),
    ("Total due $3,623.40", "Total due $3,623.40"),
    ("March 18,2024.The annex", "March 18, 2024. The annex"),
    ("Subject:Move", "Subject: Move"),
    ("on the 2nd floor at3pm", "on the 2nd floor at 3 pm"),
    ("theElmRoad annex", "the Elm Road annex"),
    # lines RapidOCR read from the sample memo, with the spaces it dropped
    ("Technical Serviceswillmovefrom theElmRoad annexto thesecond",
     "Technical Services will move from the Elm Road annex to the second"),
    ("flooroftheMainBranchat40HarborStreet.Themovewill takeplaceon",
     "floor of the Main Branch at 40 Harbor Street. The move will take place on"),
    ("Pleasepackyourdeskbeforeyou leaveonMarch15.Labeleverybox",
     "Please pack your desk before you leave on March 15. Label every box"),
    ("DanaWhitfieldatextension2314beforeMarch8.", "Dana Whitfield at extension 2314 before March 8."),
    ("Thankyou foryourpatienceduring themove.", "Thank you for your patience during the move."),
])
def test_dropped_spaces_come_back(raw, spaced):
    assert respace(raw) == spaced


@pytest.mark.parametrize("kept", [
    "Priya Raman, Facilities Manager",  # a name ending in a short word ("Ram an")
    "40 Harbor Street, Bellmore",  # a name made of two words ("Bell more")
    "Okafor", "okafor", "Martin Kenton",  # names the vocabulary lacks or that end in a preposition-like word
    "BELLMORECOUNTYPUBLICLIBRARY",  # all capitals: no case to go by
    "movers", "U.S. and e.g. iPhone",
    "international conference proceedings",
    "INV-2024-0173 of 1,250 units at 3.5%",
])
def test_words_names_and_numbers_stay_whole(kept):
    assert respace(kept) == kept


def test_respace_is_idempotent():
    once = respace("Staffparking atHarborStreetrequiresa permit.Torequestone,contact")
    assert once == "Staffparking at Harbor Street requires a permit. To request one, contact"
    assert respace(once) == once
