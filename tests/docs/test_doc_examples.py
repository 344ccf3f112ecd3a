"""Every porter.yaml and targets example in README.md and docs/*.md loads with keyless's own loaders.

A block is a porter.yaml when it has ``services:`` (or ``apps:``) at the top, a targets file when it has
``targets:``; other YAML (a GitHub Actions workflow) is not keyless's to load. An example is valid
unless the sentence just before it says it is not, and then it must be refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from keyless.errors import InvalidInput
from keyless.porter import load_app
from keyless.targets import load_targets

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.M | re.S)
# Said in the text just before an example that is shown to be refused.
_SAID_INVALID = re.compile(r"\b(invalid|refused|rejected|an error)\b[^.\n]*:\s*$", re.I)


@dataclass(frozen=True)
class Example:
    document: Path
    line: int
    kind: str  # "porter" or "targets"
    text: str
    said_invalid: bool

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def _kind(body: str) -> str | None:
    top = {m.group(1) for m in re.finditer(r"^([A-Za-z]\w*):", body, re.M)}
    if "targets" in top:
        return "targets"
    if top & {"services", "apps"}:
        return "porter"
    return None


def examples() -> list[Example]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in _FENCE.finditer(text):
            if match.group("lang") not in ("yaml", "yml"):
                continue
            indent = match.group("indent")
            body = "\n".join(line.removeprefix(indent) for line in match.group("body").splitlines()) + "\n"
            kind = _kind(body)
            if kind is None:
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n\n", 1)[-1]
            found.append(Example(document, text.count("\n", 0, match.start()) + 2, kind, body,
                                 bool(_SAID_INVALID.search(before))))
    return found


EXAMPLES = examples()


def test_the_docs_hold_examples_of_both_kinds() -> None:
    # Guards the extraction itself: a change of fences must not make this test check nothing.
    kinds = [e.kind for e in EXAMPLES]
    assert kinds.count("porter") >= 4
    assert kinds.count("targets") >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_each_example_loads_as_the_text_says(example: Example) -> None:
    # No ${VAR} in the examples may depend on who runs the test: an empty environment.
    def load() -> object:
        if example.kind == "targets":
            return load_targets(example.text.encode(), example.name, {})
        return load_app(example.text.encode(), example.name, {})

    if example.said_invalid:
        with pytest.raises(InvalidInput):
            load()
        return
    try:
        load()
    except InvalidInput as error:
        pytest.fail(f"{example.name}: the example is refused:\n" + error.render())
