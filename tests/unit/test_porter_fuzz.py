"""Property tests: whatever bytes arrive, load_app and load_targets return a result or raise InvalidInput whose
diagnostics are well-formed; never any other exception (which would reach the user as a traceback)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from keyless.diagnostics import Diagnostic, Severity
from keyless.errors import InvalidInput
from keyless.porter import load_app
from keyless.targets import load_targets

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = sorted((Path(__file__).resolve().parent.parent / "data" / "valid").glob("*.yaml"))
ENV = {"KEYLESS_TEST_IMAGE_TAG": "v1", "KEYLESS_TEST_API_ROLE": "api", "KEYLESS_TEST_PORT": "8080", "HOME": "/"}


def _check_diagnostics(diagnostics: tuple[Diagnostic, ...], file: str) -> None:
    for d in diagnostics:
        assert d.file == file
        assert d.position.line >= 1
        assert d.position.column >= 1, d
        assert d.message
        assert d.render().startswith(f"{file}:{d.position.line}:{d.position.column}: ")


def outcome_of_app(data: bytes) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stray library warnings are a separate finding (see test_spec_rules)
        try:
            loaded = load_app(data, "porter.yaml", ENV)
        except InvalidInput as exc:
            diagnostics = exc.diagnostics
        else:
            diagnostics = None
    if diagnostics is not None:
        assert any(d.severity is Severity.ERROR for d in diagnostics), "InvalidInput without an error"
        _check_diagnostics(diagnostics, "porter.yaml")
        return "invalid"
    assert not any(d.severity is Severity.ERROR for d in loaded.diagnostics)
    _check_diagnostics(loaded.diagnostics, "porter.yaml")
    return "valid"


def outcome_of_targets(data: bytes) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            targets = load_targets(data, "targets.yaml", ENV)
        except InvalidInput as exc:
            _check_diagnostics(exc.diagnostics, "targets.yaml")
            return "invalid"
    _check_diagnostics(targets.diagnostics, "targets.yaml")
    return "valid"


# --- plain noise -------------------------------------------------------------------------------

YAMLISH = st.text(alphabet=st.sampled_from(list("ab:- \n\t{}[],&*!|>'\"#%@`?$~.0123456789\\\r<")), max_size=200)


@FUZZ
@given(st.text(max_size=300))
@example("services:\n  - name: api\n    type: web\n")
@example("*a")
@example("&a [*a]")
@example("!!binary x")
@example("? ? ? a")
@example("<<: *x")
@example("%YAML 1.1\n---\n")
@example("%TAG ! tag:example.com,2000:\n--- !foo 1\n")
def test_random_text_never_escapes_as_another_exception(text: str) -> None:
    outcome_of_app(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(YAMLISH)
def test_random_yaml_punctuation_never_escapes(text: str) -> None:
    outcome_of_app(text.encode())
    outcome_of_targets(text.encode())


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xff\xfe")
@example(b"\xef\xbb\xbf")
@example(b"\xef\xbb\xbf\xff\xfe")
@example(b"\x00")
@example(b"\xed\xa0\x80")  # an encoded surrogate
def test_random_bytes_never_escape_as_another_exception(data: bytes) -> None:
    outcome_of_app(data)
    outcome_of_targets(data)


# --- random structures, dumped as YAML ---------------------------------------------------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=20),
    st.sampled_from(["web", "worker", "job", "awsRole", "azureManagedIdentity", "gcpServiceAccount", "cloudSql",
                     "disk", "${X}", "${X:-1}", "$${X}", "${", "arn:aws:iam::123456789012:role/a", "v2", "a@b"]),
)
KEYS = st.one_of(st.text(max_size=12), st.sampled_from([
    "version", "name", "services", "type", "port", "run", "connections", "role", "identityName", "resourceGroup",
    "serviceAccountEmail", "env", "envGroups", "build", "image", "predeploy", "initialDeploy", "autoRollback",
    "cron", "instances", "cpuCores", "ramMegabytes", "healthCheck", "autoscaling", "domains", "pathRouting",
    "ingressAnnotations", "config", "targets", "cloud", "region", "cluster", "namespace", "kubernetes", "<<",
]))
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=30,
)


def _dump(value: Any, style: str) -> bytes:
    if style == "json":
        return json.dumps(value).encode()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = style == "flow"
    stream = io.StringIO()
    yaml.dump(value, stream)
    return stream.getvalue().encode()


@FUZZ
@given(STRUCTURES, st.sampled_from(["json", "block", "flow"]))
def test_random_structures_never_escape(value: Any, style: str) -> None:
    data = _dump(value, style)
    outcome_of_app(data)
    outcome_of_targets(data)


SERVICE = st.dictionaries(KEYS, STRUCTURES, max_size=6).map(lambda d: {"name": "api", **d})
CONNECTION = st.fixed_dictionaries(
    {"type": st.sampled_from(["awsRole", "azureManagedIdentity", "gcpServiceAccount", "cloudSql", "disk"])},
    optional={"role": SCALARS, "identityName": SCALARS, "resourceGroup": SCALARS,
              "serviceAccountEmail": SCALARS, "config": STRUCTURES},
)
APP = st.fixed_dictionaries(
    {"services": st.lists(st.one_of(SERVICE, st.builds(
        lambda svc, conns: {**svc, "connections": conns}, SERVICE, st.lists(CONNECTION, max_size=3))), max_size=3)},
    optional={"version": SCALARS, "name": SCALARS, "env": STRUCTURES, "build": STRUCTURES, "image": STRUCTURES,
              "predeploy": STRUCTURES},
)


@FUZZ
@given(APP, st.sampled_from(["json", "block"]))
def test_porter_shaped_structures_never_escape(value: Any, style: str) -> None:
    outcome_of_app(_dump(value, style))


TARGET = st.fixed_dictionaries(
    {"cloud": st.sampled_from(["aws", "azure", "gcp", "ibm"])},
    optional=dict.fromkeys(("region", "cluster", "namespace", "subscription", "resourceGroup", "project",
                            "location", "armEndpoint", "caBundle"), SCALARS) | {"kubernetes": STRUCTURES},
)


@FUZZ
@given(st.dictionaries(st.text(max_size=10), TARGET, max_size=3), st.sampled_from(["json", "block"]))
def test_targets_shaped_structures_never_escape(targets: dict[str, Any], style: str) -> None:
    outcome_of_targets(_dump({"targets": targets}, style))


# --- the valid corpus, damaged -----------------------------------------------------------------


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_damaged_real_files_never_escape(path: Path, data: st.DataObject) -> None:
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        at = data.draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)))
        action = data.draw(st.sampled_from(["delete", "insert", "replace", "cut-line", "dup-line"]))
        if action == "delete" and raw:
            del raw[at]
        elif action in ("insert", "replace"):
            special = list(b" \t\n:-[]{}&*!#'\"|>$%\x00\xff")
            byte = data.draw(st.one_of(st.sampled_from(special), st.integers(0, 255)))
            if action == "insert" or not raw:
                raw.insert(at, byte)
            else:
                raw[at] = byte
        else:
            lines = bytes(raw).splitlines(keepends=True)
            if lines:
                i = at % len(lines)
                lines[i:i + 1] = [] if action == "cut-line" else [lines[i], lines[i]]
                raw = bytearray(b"".join(lines))
    outcome_of_app(bytes(raw))
