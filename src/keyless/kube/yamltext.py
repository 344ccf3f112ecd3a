"""YAML text of Kubernetes documents, in the layout kubectl prints (used by render mode and the previews)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from ruamel.yaml import YAML


def to_yaml(*documents: Mapping[str, Any]) -> str:
    """YAML text of one or more documents, keys in the order given (the order kubectl prints)."""
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # long annotation values (ARNs) stay on one line
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = io.StringIO()
    yaml.dump_all([_plain(d) for d in documents], out)
    return out.getvalue()


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
