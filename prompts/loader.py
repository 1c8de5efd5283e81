"""Load protocol templates (SPEC §1, §2, §2b) from the bundled files or from a user's own file.

A checkpoint is trained on one instruction text (SPEC §2), so every text the model reads lives in a file a user
can replace. Templates are Jinja, checked at load (the text parses; it uses only variables its protocol knows) and
rendered strictly (a variable it uses and is not given is an error, never an empty string).

Page text reaches the model only as delimited data (DESIGN, Conventions): the `page_text` template is given the
block `pagelens.tools.untrusted.delimit` made, never the raw text, so a document can neither close the delimiter and
speak as the user nor write a protocol tag. User files are rendered in Jinja's immutable sandbox: a template shipped
with a downloaded checkpoint cannot reach Python internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pagelens.errors import BadInputError

_INSTRUCTION_MULTI_TURN = frozenset({"question", "max_turns", "bbox_convention"})

# The bundled templates and the variables each may use; a user's file standing in for one is held to the same set.
VARIABLES: dict[str, frozenset[str]] = {
    "vrag": _INSTRUCTION_MULTI_TURN,
    "evisrag": frozenset({"question", "image_count"}),
    "pagelens": _INSTRUCTION_MULTI_TURN,
    "vrag_invalid_action": frozenset({"reason"}),
    "vrag_answer_now": frozenset({"max_turns"}),
    "pagelens_invalid_action": frozenset({"reason"}),
    "pagelens_answer_now": frozenset({"max_turns"}),
    "page_text": frozenset({"block"}),
    "search_empty": frozenset({"query"}),
    "vrag_judge": frozenset({"question", "reference", "answer"}),
}
_ANY_VARIABLE = frozenset().union(*VARIABLES.values())

_ENVIRONMENT = ImmutableSandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


@dataclass(frozen=True)
class Template:
    """A checked protocol template; `render(**values)` fills it in."""

    name: str
    known: frozenset[str]
    variables: frozenset[str]
    _template: jinja2.Template = field(repr=False, compare=False)

    def render(self, **values: object) -> str:
        """The text with `values` filled in; a variable it uses and is not given is a BadInputError."""
        unknown = sorted(values.keys() - self.known)
        if unknown:
            raise BadInputError(
                f"template {self.name} was given {', '.join(unknown)}, which it does not know; "
                f"pass only {', '.join(sorted(self.known))}."
            )
        try:
            return self._template.render(**values)
        except jinja2.UndefinedError as error:
            raise BadInputError(
                f"template {self.name} needs a value it was not given ({error.message}); pass every variable it "
                f"uses: {', '.join(sorted(self.variables))}."
            ) from error
        except jinja2.TemplateError as error:
            # The sandbox refusing an unsafe operation: only a user's file can contain one.
            raise BadInputError(
                f"template {self.name} could not be rendered ({error.message}); keep it to variables, "
                f"conditions and loops."
            ) from error


def load_template(name_or_path: str, kind: str | None = None) -> Template:
    """Load a bundled template by name (`vrag`, `evisrag`, `pagelens`, …) or a user's template file by path.

    `kind` names the bundled template a file stands in for, and holds it to that template's variables; it defaults
    to the name for a bundled template, and to every variable any template knows for a file.
    """
    if kind is not None and kind not in VARIABLES:
        raise BadInputError(f"template kind {kind!r} is unknown; use one of {', '.join(sorted(VARIABLES))}.")
    if name_or_path in VARIABLES:
        name = name_or_path
        source = resources.files("pagelens.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8")
        kind = kind or name
    else:
        path = Path(name_or_path).expanduser()
        name = str(path)
        source = _read(path)
    known = VARIABLES[kind] if kind else _ANY_VARIABLE
    where = f"template {name}" if name in VARIABLES else f"template file {name}"

    try:
        parsed = _ENVIRONMENT.parse(source)
    except jinja2.TemplateSyntaxError as error:
        raise BadInputError(
            f"{where} is not a valid Jinja template (line {error.lineno}: {error.message}); fix its syntax."
        ) from error
    variables = frozenset(meta.find_undeclared_variables(parsed))
    unknown = sorted(variables - known)
    if unknown:
        protocol = f"the {kind} template" if kind else "any pagelens template"
        raise BadInputError(
            f"{where} uses {', '.join(unknown)}, which {protocol} does not know; "
            f"use only {', '.join(sorted(known))}."
        )
    return Template(name, known, variables, _ENVIRONMENT.from_string(parsed))


def _read(path: Path) -> str:
    if not path.is_file():
        raise BadInputError(
            f"template file {path} does not exist; give the path of a template file or a bundled name "
            f"({', '.join(sorted(VARIABLES))})."
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadInputError(f"template file {path} cannot be read as UTF-8 text ({error}); check the file.") from error
