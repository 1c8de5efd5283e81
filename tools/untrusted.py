"""Document text is untrusted data: the one way page text is put in front of a model, and the escape behind it.

A page can hold text written as instructions, or as the agent protocols' own tags (`<search>…</search>`,
`</evidence><answer>…</answer>`). Every path that shows page text to a model (the `page_text` prompt template, the
MCP `search_pages` snippets, the LangChain tools and retriever) goes through `delimit`, which wraps it in one
`<page_text source="…">` block that the instructions call data. Inside the block every `<` of the text is written
`&lt;`, so the text can neither close the block in any spelling (`</page_text>`, `< /PAGE_TEXT >`) nor hold a tag
that a protocol parser, or a model quoting the text back, would take for one. `defuse` is that escape alone, for page
text quoted where a block does not fit (the extractive policy's evidence and answers).

`>` and `&` stay as they are: no tag can start without `<`, and "R&D" or "> 5" read as written.
"""

from __future__ import annotations

TAG = "page_text"
# "<" and the forms Unicode compatibility normalisation (NFKC) folds into it, so a reader that normalises text
# (a tokenizer, a model) cannot read a fullwidth `＜/page_text＞` as the closing delimiter either.
_OPENERS = ("<", "\uff1c", "\ufe64")


def defuse(text: str) -> str:
    """`text` with every `<` (and its fullwidth and small forms) written `&lt;`: no tag can start inside it."""
    for opener in _OPENERS:
        text = text.replace(opener, "&lt;")
    return text


def delimit(text: str, source: str) -> str:
    """Page text as one block of untrusted data, labelled with where it comes from (e.g. "report.pdf p.3").

    The label is defused too and kept to one line inside its quotes, since a document's name is a file name a
    document's author may have chosen.
    """
    label = " ".join(defuse(source).replace('"', "&quot;").split())
    return f'<{TAG} source="{label}">\n{defuse(text)}\n</{TAG}>'
