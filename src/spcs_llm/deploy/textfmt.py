"""Two tiny, deterministic writers (YAML for the service spec, TOML for the service config).

Hand-written so that ``deploy --dry-run`` needs nothing beyond the base install and the output is byte-stable
for golden tests. They cover exactly the value types the renderer produces: dict, list, str, int, float, bool.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLAIN = re.compile(r"^[A-Za-z0-9/_][A-Za-z0-9/_.@:-]*$")
_AMBIGUOUS = re.compile(r"^(true|false|yes|no|on|off|null|~|[-+]?[0-9][0-9_.eE+-]*)$", re.IGNORECASE)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if not isinstance(v, str):
        raise TypeError(f"cannot write {type(v).__name__} to YAML")
    if _PLAIN.match(v) and not _AMBIGUOUS.match(v) and not v.endswith(":"):
        return v
    return json.dumps(v)  # a JSON string is a valid YAML double-quoted scalar


def _block(s: str, indent: str) -> list[str]:
    head = "|" if s.endswith("\n") and not s.endswith("\n\n") else "|-"
    return [head, *(f"{indent}{line}" if line else "" for line in s.removesuffix("\n").split("\n"))]


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML; multi-line strings become literal blocks."""
    return "\n".join(_yaml_lines(value, indent)) + "\n"


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            lines += _yaml_item(f"{pad}{_scalar(k)}:", v, indent + 2)
    elif isinstance(value, list):
        for v in value:
            sub = _yaml_item(f"{pad}-", v, indent + 2)
            if isinstance(v, dict) and v:  # "- key: value" on the dash line
                first = sub[1].lstrip()
                sub = [f"{pad}- {first}", *sub[2:]]
            lines += sub
    else:
        lines.append(pad + _scalar(value))
    return lines


def _yaml_item(head: str, v: Any, indent: int) -> list[str]:
    if isinstance(v, dict | list):
        if not v:
            return [f"{head} {'{}' if isinstance(v, dict) else '[]'}"]
        return [head, *_yaml_lines(v, indent)]
    if isinstance(v, str) and "\n" in v:
        first, *rest = _block(v, " " * indent)
        return [f"{head} {first}", *rest]
    return [f"{head} {_scalar(v)}"]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # TOML basic strings use JSON's escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if re.match(r"^[A-Za-z0-9_-]+$", k) else json.dumps(k)


def to_toml(doc: dict[str, Any]) -> str:
    """``{table: {key: value}}`` and ``{name: [ {..}, .. ]}`` (arrays of tables), in the order given."""
    out: list[str] = []
    for table, body in doc.items():
        rows = body if isinstance(body, list) else [body]
        for row in rows:
            out.append(f"[[{table}]]" if isinstance(body, list) else f"[{_toml_key(table)}]")
            out += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in row.items()]
            out.append("")
    return "\n".join(out)
