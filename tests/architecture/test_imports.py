"""The house rules a test can check: every import (function-local ones too) against docs/ARCHITECTURE.md's table,
no I/O library in the pure core, and no module outside the cloud registry switching on the cloud."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "ARCHITECTURE.md"

# Libraries that do I/O (network, database, processes): the pure core never imports them.
IO_LIBRARIES = ("boto3", "botocore", "azure", "google", "lightkube", "httpx", "httpx2", "requests", "urllib3",
                "aiohttp", "sqlalchemy", "alembic", "psycopg", "fastapi", "starlette", "uvicorn", "socket",
                "subprocess", "urllib.request", "http.client", "moto", "kmock")

# Names that only the registry (and each cloud's own provider, sandbox, targets and porter.yaml models) may use.
CLOUD_SPECIFIC = re.compile(r"^(AwsTarget|AzureTarget|GcpTarget|AwsRole|AzureIdentity|GcpIdentity|"
                            r"AwsRoleConnection|AzureManagedIdentityConnection|GcpServiceAccountConnection)$")
MAY_NAME_CLOUDS = ("keyless.clouds", "keyless.providers", "keyless.sandbox", "keyless.targets", "keyless.porter")


@dataclass(frozen=True)
class Rule:
    prefix: str
    allowed: tuple[str, ...]
    core: bool


def _rules() -> list[Rule]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("<!-- import-rules:start -->", 1)[1].split("<!-- import-rules:end -->", 1)[0]
    rules = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        allowed = tuple(re.findall(r"`([a-z_.]+)`", cells[1]))
        rules.append(Rule(cells[0].strip("`"), allowed, cells[2].lower() == "yes"))
    return rules


RULES = _rules()


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def rule_for(module: str) -> Rule | None:
    # The row `keyless` is the package's __init__ alone, not a catch-all for every module below it.
    matching = [r for r in RULES if (_within(module, r.prefix) if "." in r.prefix else module == r.prefix)]
    return max(matching, key=lambda r: len(r.prefix)) if matching else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str) -> bool:
    base = SRC / module.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, wherever it is (module level, function, branch)."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                origin = ".".join([*base, *([node.module] if node.module else [])])
            else:
                origin = node.module or ""
            for alias in node.names:
                candidate = f"{origin}.{alias.name}"
                found.append((node.lineno, candidate if _exists(candidate) else origin))
    return found


SOURCES = sorted(SRC.rglob("*.py"))


def test_the_rules_table_is_there_and_covers_every_module() -> None:
    assert len(RULES) > 20, "docs/ARCHITECTURE.md lost its import-rules table"
    uncovered = [_module_name(p) for p in SOURCES if rule_for(_module_name(p)) is None]
    assert uncovered == [], f"add these modules to the import-rules table of docs/ARCHITECTURE.md: {uncovered}"


def test_the_core_may_only_import_the_core() -> None:
    for rule in RULES:
        if not rule.core:
            continue
        for allowed in rule.allowed:
            target = rule_for(allowed)
            assert target is not None, f"{rule.prefix} may import {allowed}, which no row of the table covers"
            assert target.core, f"{rule.prefix} is core but may import {allowed}, which is not"


def violations(path: Path, module: str) -> list[str]:
    rule = rule_for(module)
    assert rule is not None
    broken = []
    for line, target in imports_of(path, module):
        if target == "keyless" or not target.startswith("keyless."):
            continue  # the package itself (its version) and third-party modules
        own = _within(target, rule.prefix) or (rule_for(target) is rule)
        if own or any(_within(target, allowed) for allowed in rule.allowed):
            continue
        broken.append(f"{path.name}:{line}: {module} imports {target}")
    return broken


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_every_import_follows_the_table(path: Path) -> None:
    broken = violations(path, _module_name(path))
    assert broken == [], "imports the table in docs/ARCHITECTURE.md does not allow:\n" + "\n".join(broken)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_the_core_does_no_io(path: Path) -> None:
    rule = rule_for(_module_name(path))
    assert rule is not None
    if not rule.core:
        return
    io = [f"{path.relative_to(ROOT)}:{line}: {target}" for line, target in imports_of(path)
          if any(_within(target, lib) for lib in IO_LIBRARIES)]
    assert io == [], "the pure core imports an I/O library:\n" + "\n".join(io)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_registry_names_the_clouds(path: Path) -> None:
    module = _module_name(path)
    if any(_within(module, allowed) for allowed in MAY_NAME_CLOUDS):
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    switching = [f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(tree)
                 if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Cloud"
                     and node.attr.isupper())
                 or (isinstance(node, ast.Name) and CLOUD_SPECIFIC.match(node.id))
                 or (isinstance(node, ast.alias) and CLOUD_SPECIFIC.match(node.name))]
    assert switching == [], "only keyless.clouds (the registry) may know the list of clouds:\n" + "\n".join(switching)


def test_the_checker_catches_a_forbidden_function_local_import(tmp_path: Path) -> None:
    # The walker must see imports inside functions and branches, not only at the top of a module.
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    if True:\n        from keyless.providers import aws\n")
    assert violations(fake, "keyless.plan.fake") == ["fake.py:3: keyless.plan.fake imports keyless.providers.aws"]
    fake.write_text("from ..kube import manifests\n")  # relative imports resolve like absolute ones
    assert violations(fake, "keyless.plan.fake") == []
    assert violations(fake, "keyless.porter.fake") == ["fake.py:1: keyless.porter.fake imports keyless.kube.manifests"]
