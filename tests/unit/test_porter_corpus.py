"""The porter.yaml corpus: every file of tests/data/invalid is rejected with the errors its header names, every
file of tests/data/valid loads with exactly the warnings and notes its header names, and the CLI agrees.

Header lines (leading comments of a file):
  # expect: LINE: fragment           an error on LINE whose message or hint contains fragment
  # expect: LINE:COL: fragment       the same, at that column too
  # expect-warning: LINE: fragment   (valid files) a warning on LINE
  # expect-note: LINE: fragment      (valid files) a note on LINE
  # env: NAME=value                  the environment the file is loaded with (nothing else is set)
Files that cannot carry a comment (binary, other encodings) have their expectations in
tests/data/invalid/expectations.txt as `FILE: LINE: fragment`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from keyless.diagnostics import Diagnostic, Severity
from keyless.errors import InvalidInput
from keyless.porter import load_app, load_apps
from keyless.porter.yamlsource import MAX_BYTES

DATA = Path(__file__).resolve().parent.parent / "data"
INVALID_DIR = DATA / "invalid"
VALID_DIR = DATA / "valid"
INVALID = sorted(INVALID_DIR.glob("*.yaml"))
VALID = sorted(VALID_DIR.glob("*.yaml"))

_EXPECT = re.compile(r"^#\s*expect(?:-(?P<kind>warning|note))?:\s*(?P<line>\d+)(?::(?P<col>\d+))?:\s*(?P<frag>.+?)\s*$")
_ENV = re.compile(r"^#\s*env:\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")
_SIDE = re.compile(r"^(?P<file>[^:#\s][^:]*):\s*(?P<line>\d+):\s*(?P<frag>.+?)\s*$")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_FILE_NAME = re.compile(r"^\d\d-[a-z0-9]+(-[a-z0-9]+)*\.yaml$")


@dataclass(frozen=True)
class Expect:
    severity: Severity
    line: int
    column: int | None
    fragment: str

    def matches(self, d: Diagnostic) -> bool:
        return (d.severity is self.severity and d.position.line == self.line
                and (self.column is None or d.position.column == self.column)
                and (self.fragment in d.message or self.fragment in d.hint))

    def __str__(self) -> str:
        where = f"{self.line}:{self.column}" if self.column else f"{self.line}"
        return f"{self.severity.value} at {where}: {self.fragment!r}"


@dataclass
class Case:
    path: Path
    expects: list[Expect] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def placeholders(self) -> set[str]:
        return set(_PLACEHOLDER.findall(self.data.decode("utf-8", "replace")))


def _side_expectations() -> dict[str, list[Expect]]:
    found: dict[str, list[Expect]] = {}
    side = INVALID_DIR / "expectations.txt"
    for raw in side.read_text().splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        m = _SIDE.match(raw)
        assert m, f"expectations.txt: cannot read {raw!r}"
        found.setdefault(m["file"], []).append(Expect(Severity.ERROR, int(m["line"]), None, m["frag"]))
    return found


SIDE = _side_expectations()


def read_case(path: Path) -> Case:
    case = Case(path)
    text = path.read_bytes().decode("utf-8", "replace")
    for line in text.splitlines():
        if not line.startswith("#"):
            break  # the header is the leading block of comments
        if m := _EXPECT.match(line):
            kind = {"warning": Severity.WARNING, "note": Severity.NOTE}.get(m["kind"] or "", Severity.ERROR)
            col = int(m["col"]) if m["col"] else None
            case.expects.append(Expect(kind, int(m["line"]), col, m["frag"]))
        elif m := _ENV.match(line):
            case.env[m["name"]] = m["value"]
    case.expects.extend(SIDE.get(path.name, []))
    return case


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def _listing(diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> str:
    return "\n".join(d.render() for d in diagnostics) or "(no diagnostics)"


# --- the corpus itself -------------------------------------------------------------------------


def test_corpus_is_large_enough_and_well_formed() -> None:
    assert len(INVALID) >= 70, f"{len(INVALID)} invalid files"
    assert len(VALID) >= 18, f"{len(VALID)} valid files"
    for path in INVALID + VALID:
        assert _FILE_NAME.match(path.name), f"{path.name}: name files NN-short-name.yaml"
    for path in INVALID:
        case = read_case(path)
        assert case.expects, f"{path.name}: no `# expect:` header and no line in expectations.txt"
        assert all(e.severity is Severity.ERROR for e in case.expects), path.name
    for name in SIDE:
        assert (INVALID_DIR / name).is_file(), f"expectations.txt names {name}, which does not exist"
    numbers = [p.name[:2] for p in INVALID]
    assert len(numbers) == len(set(numbers)), "two invalid files share a number"


# --- invalid files -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=_ids(INVALID))
def test_invalid_file_is_rejected_with_the_expected_errors(path: Path) -> None:
    case = read_case(path)
    with pytest.raises(InvalidInput) as caught:
        load_app(case.data, path.name, case.env)
    diagnostics = caught.value.diagnostics
    errors = [d for d in diagnostics if d.severity is Severity.ERROR]
    assert errors, "InvalidInput without an error:\n" + _listing(diagnostics)
    missing = [str(e) for e in case.expects if not any(e.matches(d) for d in errors)]
    assert not missing, f"expected {missing}, got:\n{_listing(diagnostics)}"
    # one deliberate defect per file (or the few listed): nothing reported elsewhere
    lines = {e.line for e in case.expects}
    stray = [d for d in errors if d.position.line not in lines]
    assert not stray, f"unexpected errors (header expects lines {sorted(lines)}):\n{_listing(stray)}"


@pytest.mark.parametrize("path", INVALID, ids=_ids(INVALID))
def test_invalid_file_diagnostics_render_as_file_line_col(path: Path) -> None:
    case = read_case(path)
    try:
        load_app(case.data, str(path), case.env)
    except InvalidInput as exc:
        caught = exc
    else:
        pytest.skip("the file loads: test_invalid_file_is_rejected_with_the_expected_errors reports it")
    text = caught.render()
    assert "Traceback" not in text
    for d in caught.diagnostics:
        assert d.file == str(path)
        assert d.position.line >= 1
        assert d.position.column >= 1
        first = d.render().splitlines()[0]
        assert first.startswith(f"{path}:{d.position.line}:{d.position.column}: "), first
        assert d.message.strip(), "empty message"
        assert first in text
    # all errors of the file come at once, in file order
    positions = [(d.position.line, d.position.column) for d in caught.diagnostics]
    assert positions == sorted(positions)


def test_every_error_of_the_invalid_corpus_carries_a_hint() -> None:
    """The issue: every error is `porter.yaml:LINE:COL: message` plus a hint."""
    without: list[str] = []
    for path in INVALID:
        case = read_case(path)
        try:
            load_app(case.data, path.name, case.env)
        except InvalidInput as exc:
            without += [d.render() for d in exc.diagnostics if d.severity is Severity.ERROR and not d.hint.strip()]
    assert not without, f"{len(without)} errors have no hint:\n" + "\n".join(without)


def test_a_file_over_the_size_cap_is_rejected_before_parsing() -> None:
    service = b"  - name: api\n    type: web\n"
    # Past the cap: a NUL byte, bytes that are not UTF-8 and an unclosed flow sequence. Had any of it been
    # looked at, it would have been its own error; the one diagnostic is the size, so it was never read.
    data = b"services:\n" + service + b"\x00\xff[" * (MAX_BYTES // 3 + 1)
    assert len(data) > MAX_BYTES
    with pytest.raises(InvalidInput) as caught:
        load_app(data, "porter.yaml", {})
    (d,) = caught.value.diagnostics
    assert (d.position.line, d.position.column) == (1, 1)
    assert f"at most {MAX_BYTES:,}" in d.message
    assert d.hint


def test_a_file_exactly_at_the_size_cap_still_loads() -> None:
    head = b"services:\n  - name: api\n    type: web\n"
    data = head + b"#" * (MAX_BYTES - len(head) - 1) + b"\n"
    assert len(data) == MAX_BYTES
    assert load_app(data, "porter.yaml", {}).app.services[0].name == "api"


# --- valid files -------------------------------------------------------------------------------


def _check_valid(case: Case, data: bytes) -> None:
    try:
        apps = load_apps(data, case.path.name, case.env)
    except InvalidInput as exc:
        pytest.fail(f"{case.path.name} was rejected:\n{exc.render()}")
    assert all(loaded.diagnostics == apps[0].diagnostics for loaded in apps), "each app carries the file's"
    found = list(apps[0].diagnostics)
    assert not [d for d in found if d.severity is Severity.ERROR]
    missing = [str(e) for e in case.expects if not any(e.matches(d) for d in found)]
    assert not missing, f"expected {missing}, got:\n{_listing(found)}"
    expected_at = {(e.severity, e.line) for e in case.expects}
    unexpected = [d for d in found if (d.severity, d.position.line) not in expected_at]
    assert not unexpected, "unexpected warnings or notes:\n" + _listing(unexpected)
    assert all(loaded.app.services for loaded in apps), "a valid app has services"


@pytest.mark.parametrize("path", VALID, ids=_ids(VALID))
def test_valid_file_loads_with_exactly_the_expected_warnings(path: Path) -> None:
    case = read_case(path)
    _check_valid(case, case.data)


@pytest.mark.parametrize("path", VALID, ids=_ids(VALID))
def test_valid_file_loads_the_same_with_windows_line_endings_and_a_bom(path: Path) -> None:
    case = read_case(path)
    _check_valid(case, b"\xef\xbb\xbf" + case.data.replace(b"\n", b"\r\n"))


def test_three_hundred_services_with_identities() -> None:
    kinds = [
        "      - type: awsRole\n        role: big-app-svc-{i}\n",
        "      - type: azureManagedIdentity\n        identityName: big-app-svc-{i}\n        resourceGroup: rg-big\n",
        "      - type: gcpServiceAccount\n"
        "        serviceAccountEmail: svc-{i:04d}@big-project.iam.gserviceaccount.com\n",
    ]
    parts = ["version: v2\nname: big-app\nservices:\n"]
    for i in range(300):
        parts.append(f"  - name: svc-{i}\n    type: worker\n    run: ./svc --id {i}\n    connections:\n")
        parts.append(kinds[i % 3].format(i=i))
    text = "".join(parts)
    loaded = load_app(text.encode(), "porter.yaml", {})
    assert not loaded.diagnostics
    assert [s.name for s in loaded.app.services] == [f"svc-{i}" for i in range(300)]
    lines = text.splitlines()
    for i in (0, 1, 2, 150, 299):
        pos = loaded.service_position(i)
        assert lines[pos.line - 1][pos.column - 1:].startswith(f"name: svc-{i}")
        conn = loaded.connection_position(i, 0)
        assert lines[conn.line - 1][conn.column - 1:].startswith("type: ")


# --- the CLI: `keyless validate -f FILE [--format json]` ---------------------------------------
#
# Driven in-process through the console-script entry point `keyless.cli:main` (what `keyless` runs), with
# typer's CliRunner isolating argv, environment and the output streams: a subprocess per file is too slow.


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    output: str  # stdout and stderr interleaved, as a terminal shows them


def _cli_main() -> Any:
    if importlib.util.find_spec("keyless.cli") is None:
        pytest.skip("keyless.cli does not exist yet (the `validate` command is being written)")
    from keyless.cli import main  # an ImportError here is a real failure, not a skip

    return main


def _run_cli(args: list[str], env: dict[str, str | None]) -> CliResult:
    from typer.testing import CliRunner

    main = _cli_main()
    code: int | str | None = 0
    with CliRunner().isolation(env=env) as (stdout, _stderr, output), \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["keyless", *args])
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        except BaseException as exc:  # anything else is what the test must report
            sys.stdout.flush()
            sys.stderr.flush()
            text = output.getvalue().decode("utf-8", "replace")
            raise AssertionError(f"`keyless {' '.join(args)}` raised {exc!r}:\n{text}") from exc
        sys.stdout.flush()
        sys.stderr.flush()
        text = output.getvalue().decode("utf-8", "replace")
        out = stdout.getvalue().decode("utf-8", "replace")
    assert "Traceback" not in text, text
    exit_code = code if isinstance(code, int) else (0 if code is None else 1)
    return CliResult(exit_code, out, text)


def _validate(case: Case, *extra: str) -> CliResult:
    env: dict[str, str | None] = dict.fromkeys(case.placeholders)
    env.update(case.env)
    return _run_cli(["validate", "-f", str(case.path), *extra], env)


def _loader_says(case: Case) -> tuple[Diagnostic, ...] | None:
    """What load_app reports for the file (None when it loads): the CLI must say the same, whatever that is.

    The corpus expectations are checked against the loader above; these tests check only the CLI's face.
    """
    try:
        load_apps(case.data, str(case.path), case.env)
    except InvalidInput as exc:
        return exc.diagnostics
    return None


@pytest.mark.parametrize("path", INVALID, ids=_ids(INVALID))
def test_cli_validate_rejects_invalid_file_with_exit_2(path: Path) -> None:
    case = read_case(path)
    result = _validate(case)
    expected = _loader_says(case)
    if expected is None:
        assert result.exit_code == 0, result.output  # the loader's own test reports that it should not load
        return
    assert result.exit_code == 2, result.output
    for d in expected:
        assert d.render().splitlines()[0] in result.output, result.output
    for line in result.output.splitlines():
        if line.strip() and not line.startswith(" "):
            assert re.match(rf"^{re.escape(str(path))}:\d+:\d+: ", line), f"not FILE:LINE:COL: {line!r}"


@pytest.mark.parametrize("path", INVALID, ids=_ids(INVALID))
def test_cli_validate_json_rejects_invalid_file_with_exit_2(path: Path) -> None:
    case = read_case(path)
    result = _validate(case, "--format", "json")
    expected = _loader_says(case)
    if expected is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2, result.output
    document = json.loads(result.stdout)
    reported = {(item.get("line"), item.get("column"), item.get("message")) for item in _dicts(document)}
    for d in expected:
        assert (d.position.line, d.position.column, d.message) in reported, result.stdout


@pytest.mark.parametrize("path", VALID, ids=_ids(VALID))
def test_cli_validate_accepts_valid_file(path: Path) -> None:
    case = read_case(path)
    result = _validate(case)
    assert result.exit_code == (2 if _loader_says(case) else 0), result.output


@pytest.mark.parametrize("path", VALID, ids=_ids(VALID))
def test_cli_validate_json_accepts_valid_file(path: Path) -> None:
    case = read_case(path)
    result = _validate(case, "--format", "json")
    assert result.exit_code == (2 if _loader_says(case) else 0), result.output
    json.loads(result.stdout)


def test_cli_validate_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "porter.yaml"
    result = _run_cli(["validate", "-f", str(missing)], {})
    assert result.exit_code == 2, result.output
    assert f"{missing}:1:1: file not found" in result.output


def test_cli_validate_of_an_oversized_file_exits_2(tmp_path: Path) -> None:
    big = tmp_path / "porter.yaml"
    big.write_bytes(b"services:\n  - name: api\n    type: web\n" + b"#" * MAX_BYTES)
    result = _run_cli(["validate", "-f", str(big)], {})
    assert result.exit_code == 2, result.output
    assert f"{big}:1:1: " in result.output


def test_cli_app_object_exits_2_on_invalid_input_without_the_main_wrapper() -> None:
    """`CliRunner().invoke(keyless.cli.app, ...)`: the Typer app on its own turns InvalidInput into exit 2."""
    _cli_main()
    from typer.testing import CliRunner

    from keyless.cli import app

    path = INVALID_DIR / "43-port-out-of-range.yaml"
    result = CliRunner().invoke(app, ["validate", "-f", str(path)])
    assert not isinstance(result.exception, InvalidInput), (
        "InvalidInput escapes the `validate` command; only keyless.cli:main turns it into exit 2")
    assert result.exit_code == 2, result.output


def _dicts(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        return [value, *[d for v in value.values() for d in _dicts(v)]]
    if isinstance(value, list):
        return [d for v in value for d in _dicts(v)]
    return []
