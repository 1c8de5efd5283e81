"""Office documents to PDF through LibreOffice: a real conversion, and the errors a user can meet."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pypdfium2
import pytest

from pagelens.errors import BadInputError, DependencyError
from pagelens.tools.corpus.office import OFFICE_SUFFIXES, convert_to_pdf

SENTENCE = "Quarterly revenue grew in Lisbon."


def write_docx(path: Path, text: str) -> Path:
    """The smallest .docx Word and LibreOffice open: content types, the package relationship, one paragraph."""
    with zipfile.ZipFile(path, "w") as docx:
        docx.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType='
            '"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>',
        )
        docx.writestr(
            "_rels/.rels",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Target="word/document.xml" Type='
            '"http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/></Relationships>',
        )
        docx.writestr(
            "word/document.xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            f"<w:body><w:p><w:r><w:t>{text}</w:t></w:r></w:p></w:body></w:document>",
        )
    return path


@pytest.mark.slow
def test_docx_converts_to_a_pdf_with_its_text(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    source = write_docx(tmp_path / "report.v2.docx", SENTENCE)

    pdf_path = convert_to_pdf(source, tmp_path / "out")

    assert pdf_path == tmp_path / "out" / "report.v2.pdf"
    pdf = pypdfium2.PdfDocument(pdf_path)
    assert len(pdf) == 1
    assert SENTENCE in pdf[0].get_textpage().get_text_range()
    # LibreOffice's chatter must not reach stdout, which the MCP server uses for its protocol.
    assert capfd.readouterr().out == ""


@pytest.mark.slow
def test_damaged_document_names_the_file(tmp_path: Path) -> None:
    source = tmp_path / "broken.docx"
    source.write_bytes(b"\x00\x01 not a zip archive " * 20)
    with pytest.raises(BadInputError, match="broken.docx"):
        convert_to_pdf(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_libreoffice_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    source = write_docx(tmp_path / "report.docx", SENTENCE)
    with pytest.raises(DependencyError, match="LibreOffice") as raised:
        convert_to_pdf(source, tmp_path / "out")
    message = str(raised.value)
    assert "report.docx" in message
    assert "apt-get install libreoffice-writer-nogui libreoffice-impress-nogui libreoffice-calc-nogui" in message
    assert "libreoffice.org" in message


def test_only_office_documents_and_existing_files_are_converted(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(SENTENCE)
    with pytest.raises(BadInputError, match="notes.txt"):
        convert_to_pdf(notes, tmp_path / "out")
    with pytest.raises(BadInputError, match="missing.pptx"):
        convert_to_pdf(tmp_path / "missing.pptx", tmp_path / "out")
    assert {".docx", ".pptx", ".xlsx", ".rtf"} <= OFFICE_SUFFIXES


@pytest.mark.slow
def test_index_takes_office_documents_through_libreoffice(tmp_path: Path, open_store, embedder) -> None:
    from pagelens.tools.corpus.ingest import index_paths
    from pagelens.tools.search import Retriever

    docs = tmp_path / "docs"
    docs.mkdir()
    write_docx(docs / "minutes.docx", "The harbour committee approved the lighthouse budget of 7,400 euros.")
    store = open_store()
    report = index_paths(store, [docs], progress=False, embedder=embedder)
    assert report.failures == []
    [document] = store.documents()
    assert (document.name, document.kind, document.page_count) == ("minutes.docx", "docx", 1)
    [hit] = Retriever(store, embedder).search("lighthouse budget", k=1)
    assert hit.page.document == "minutes.docx" and "7,400 euros" in hit.snippet
