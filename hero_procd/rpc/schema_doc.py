"""Markdown tables generated from the OpenRPC document, kept in step by `make schema`.

`python -m hero_procd.rpc.schema_doc README.md` rewrites, in each file named, the
lines between `<!-- methods:begin -->` and `<!-- methods:end -->` (a table of every
method: name, params, summary) and between `<!-- errors:begin -->` and
`<!-- errors:end -->` (the error codes). With `--check` it changes nothing and exits
1 if a file is out of date, 2 if a file has no block to fill.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

NOTE = "Generated from `rpc_schema/openrpc.json` by `make schema`; do not edit by hand."


class MarkerError(ValueError):
    """A Markdown file has no block to fill, or a block without its end marker."""


def load_document(path: Path | None = None) -> dict[str, Any]:
    """The OpenRPC document at `path`, or the one shipped in the package."""
    if path is None:
        raw = resources.files("hero_procd").joinpath("openrpc.json").read_bytes()
    else:
        raw = path.read_bytes()
    doc: dict[str, Any] = json.loads(raw)
    return doc


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """`node` with its local `$ref` (`#/a/b`) followed, repeatedly; other nodes as they are."""
    seen: set[str] = set()
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise ValueError(f"only local references are supported: {ref!r}")
        if ref in seen:
            raise ValueError(f"reference cycle at {ref}")
        seen.add(ref)
        target: Any = doc
        for part in ref[2:].split("/"):
            key = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, list):
                target = target[int(key)]
            elif isinstance(target, dict) and key in target:
                target = target[key]
            else:
                raise ValueError(f"unresolved reference {ref}")
        node = target
    return node


def method_params(doc: dict[str, Any], method: dict[str, Any]) -> list[dict[str, Any]]:
    """The method's params as content descriptors, references followed."""
    return [resolve(doc, p) for p in method.get("params", [])]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def methods_table(doc: dict[str, Any]) -> str:
    """A Markdown table of every method: name, params (`name?` when optional), summary."""
    lines = [
        NOTE + " `name?` marks an optional param.",
        "",
        "| method | params | summary |",
        "| --- | --- | --- |",
    ]
    for method in doc["methods"]:
        params = [
            f"`{p['name']}`" if p.get("required") else f"`{p['name']}?`"
            for p in method_params(doc, method)
        ]
        lines.append(
            f"| `{method['name']}` | {', '.join(params) or '-'} | "
            f"{_cell(method.get('summary', ''))} |"
        )
    return "\n".join(lines)


def errors_table(doc: dict[str, Any]) -> str:
    """A Markdown table of the error codes in `components.errors`."""
    lines = [NOTE, "", "| code | name | meaning |", "| --- | --- | --- |"]
    for name, error in doc.get("components", {}).get("errors", {}).items():
        error = resolve(doc, error)
        lines.append(f"| {error['code']} | `{name}` | {_cell(error['message'])} |")
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "methods": methods_table,
    "errors": errors_table,
}


def render(text: str, doc: dict[str, Any]) -> str:
    """`text` with every marked block regenerated from `doc`; MarkerError if it has none."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    filled = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        kind = _block_kind(line, "begin")
        if kind is None:
            continue
        end = next((j for j in range(i, len(lines)) if _block_kind(lines[j], "end") == kind), None)
        if end is None:
            raise MarkerError(f"<!-- {kind}:begin --> has no <!-- {kind}:end -->")
        out.append(BLOCKS[kind](doc) + "\n")
        out.append(lines[end])
        i = end + 1
        filled += 1
    if not filled:
        markers = ", ".join(f"<!-- {k}:begin -->" for k in BLOCKS)
        raise MarkerError(f"no block to fill (looked for {markers})")
    return "".join(out)


def _block_kind(line: str, edge: str) -> str | None:
    stripped = line.strip()
    for kind in BLOCKS:
        if stripped == f"<!-- {kind}:{edge} -->":
            return kind
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate (or, with --check, verify) the tables in each Markdown file named."""
    parser = argparse.ArgumentParser(
        prog="python -m hero_procd.rpc.schema_doc",
        description="Fill the method and error tables of Markdown files from the OpenRPC document.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="Markdown files with marked blocks")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is out of date"
    )
    parser.add_argument(
        "--schema", type=Path, default=None, help="the OpenRPC document (default: the packaged one)"
    )
    args = parser.parse_args(argv)
    doc = load_document(args.schema)
    status = 0
    for path in args.files:
        try:
            text = path.read_text(encoding="utf-8")
            new = render(text, doc)
        except (OSError, MarkerError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        if new == text:
            continue
        if args.check:
            print(f"{path} is out of date: run `make schema`", file=sys.stderr)
            status = 1
        else:
            path.write_text(new, encoding="utf-8")
            print(f"{path}: tables regenerated", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
