"""OCR re-spacing (issue 13): tools/corpus/spacing.py's `respace` against wordninja and wordsegment.

Real English sentences that are not pagelens test data, from this machine: the licence texts in
/usr/share/common-licenses and the prose of a few man pages (rendered by groff as benchmarks/manuals.py does).
Each sentence loses its spaces, either all of them or each one with probability 1/2 (the partial loss RapidOCR
shows), and every method puts them back:
  none         the text as it is (the floor)
  ours         spacing.respace
  wordninja    spacing.space_marks (ours, punctuation and case boundaries), then wordninja.split on each letter run
  wordsegment  the same with wordsegment.segment (its words are lowercased; the run's own letters are kept)
All methods only insert spaces, so a method's output is scored by where it put them: precision, recall and F1 of
the inserted spaces against the dropped ones, and the share of sentences restored exactly. Speed is the mean time
a sentence once the method's word list is loaded (the load is timed apart).

    python benchmarks/spacing.py [--sentences 400] [--seed 0]    # pip install wordninja wordsegment first
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pagelens.errors import DependencyError
from pagelens.tools.corpus.spacing import respace, space_marks

LICENCES = Path("/usr/share/common-licenses")
MAN_PAGES = ("bash.1", "tar.1", "find.1", "ssh.1", "git-rebase.1", "systemd.unit.5", "gpg.1", "less.1", "wget.1")
# A prose token: a word (hyphens and apostrophes inside), a number, with quotes, brackets or punctuation around it.
TOKEN = re.compile(r"[(\"']?(?:[A-Za-z][A-Za-z'-]*|\d+)[)\"']?[.,;:!?]?[)\"']?")


def _sentences(text: str) -> list[str]:
    """The prose sentences of a text: 6 to 30 tokens, every token a plain word or number with its punctuation."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", " ".join(paragraph.split())):
            tokens = sentence.split()
            if 6 <= len(tokens) <= 30 and all(TOKEN.fullmatch(t) for t in tokens):
                found.append(sentence)
    return found


def licence_sentences() -> list[str]:
    return sorted({s for path in sorted(LICENCES.iterdir()) if path.is_file()
                   for s in _sentences(path.read_text(errors="replace"))})


def man_sentences() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import manuals  # a sibling script, for its groff rendering

    return sorted({s for name in MAN_PAGES for s in _sentences(manuals.render_text(manuals.man_source(name)))})


def _library_split(split: Callable[[str], list[str]]) -> Callable[[str], str]:
    """Ours for punctuation and case, then `split` on each letter run, keeping the run's own letters."""

    def words(match: re.Match[str]) -> str:
        run, pieces, start = match.group(0), [], 0
        for word in split(run):
            pieces.append(run[start:start + len(word)])
            start += len(word)
        return " ".join(pieces) if start == len(run) else run  # a split that drops letters is not used

    return lambda text: re.sub(r"[A-Za-z]+", words, space_marks(text))


def _load_ours() -> Callable[[str], str]:
    respace("Loadthewordlist")  # the first call reads the embedder's vocabulary
    return respace


def _load_wordninja() -> Callable[[str], str]:
    import wordninja  # reads its word list on import

    return _library_split(wordninja.split)


def _load_wordsegment() -> Callable[[str], str]:
    import wordsegment

    wordsegment.load()
    return _library_split(wordsegment.segment)


# method -> what loads its word list and returns it, ready to re-space a line
LOADERS: dict[str, Callable[[], Callable[[str], str]]] = {
    "none": lambda: lambda text: text,
    "ours": _load_ours,
    "wordninja": _load_wordninja,
    "wordsegment": _load_wordsegment,
}


def _boundaries(text: str) -> set[int]:
    """Where the spaces are, as the number of non-space characters before each."""
    spaces, seen = set(), 0
    for char in text:
        if char == " ":
            spaces.add(seen)
        else:
            seen += 1
    return spaces


def drop_spaces(sentence: str, share: float, rng: random.Random) -> str:
    return "".join(part + (" " if rng.random() >= share else "") for part in sentence.split(" ")).rstrip()


def score(method: Callable[[str], str], originals: list[str], inputs: list[str]) -> dict[str, float]:
    inserted = dropped = correct = exact = 0
    started = time.perf_counter()
    outputs = [method(text) for text in inputs]
    seconds = time.perf_counter() - started
    for original, given, output in zip(originals, inputs, outputs):
        if output.replace(" ", "") != given.replace(" ", ""):
            raise AssertionError(f"a method changed the letters of {given!r}: {output!r}")
        kept = _boundaries(given)
        gold, guessed = _boundaries(original) - kept, _boundaries(output) - kept
        inserted, dropped, correct = inserted + len(guessed), dropped + len(gold), correct + len(gold & guessed)
        exact += output == original
    precision = correct / inserted if inserted else 1.0
    recall = correct / dropped if dropped else 1.0
    return {"p": precision, "r": recall, "f1": 2 * precision * recall / (precision + recall or 1),
            "exact": exact / len(originals), "us": 1e6 * seconds / len(inputs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=400, help="sentences per source, drawn at random")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    candidates, loads = {}, {}
    for name, load in LOADERS.items():
        started = time.perf_counter()
        try:
            candidates[name] = load()
        except ImportError as error:
            raise DependencyError(f"{error.name} is not installed: run `pip install wordninja wordsegment` "
                                  "(for this benchmark only, not a pagelens dependency)") from None
        loads[name] = time.perf_counter() - started
    rng = random.Random(args.seed)
    sources = {"licences": licence_sentences(), "man pages": man_sentences()}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("word list load: " + ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in loads.items()
                                          if name != "none"))
    print(f"\n{'source':<10} {'dropped':<8} {'method':<12} {'P':>6} {'R':>6} {'F1':>6} {'exact':>6} {'us/line':>8}")
    for source, pool in sources.items():
        sample = rng.sample(pool, min(args.sentences, len(pool)))
        for label, share in (("all", 1.0), ("half", 0.5)):
            inputs = [drop_spaces(sentence, share, rng) for sentence in sample]
            for name, method in candidates.items():
                s = score(method, sample, inputs)
                print(f"{source:<10} {label:<8} {name:<12} {s['p']:>6.3f} {s['r']:>6.3f} {s['f1']:>6.3f} "
                      f"{s['exact']:>6.3f} {s['us']:>8.0f}")
        print(f"({source}: {len(sample)} of {len(pool)} sentences)")


if __name__ == "__main__":
    main()
