"""hero-proc apply / export: stack files (README "Stack files").

Import-light on purpose: click, orjson and hero_procd.client/errors at import;
tomllib (hero_procd.stackfile) only when `apply` runs, tomli_w when `export`
does, so no other command pays for them (~4 ms).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from hero_procd.cli.options import json_option
from hero_procd.cli.session import CliError, Session
from hero_procd.errors import HeroError

# Plan lines: one mark per action.
MARKS = {"create": "+", "update": "~", "delete": "-", "orphan": "?", "unchanged": "="}
VALUE_WIDTH = 60


class StackError(CliError):
    """A stack file the daemon refused, placed in the file: `file:line: field: problem`."""

    def __str__(self) -> str:
        return self.message  # the place is in the message; `data` carries it for --json


def _value(value: Any) -> str:
    text = "-" if value is None else orjson.dumps(value).decode()
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 3] + "..."


def plan_text(plan: dict[str, Any]) -> str:
    """The plan of stack.apply for a person: one line per object changed, one per field."""
    s = plan["summary"]
    changed = [c for c in plan["changes"] if c["action"] != "unchanged"]
    if not plan["changed"] and not changed:
        return f"stack {plan['stack']}: no change ({s['unchanged']} unchanged)"
    counts = ", ".join(
        f"{s[a]} {word}"
        for a, word in (
            ("create", "to create" if plan["dry_run"] else "created"),
            ("update", "to update" if plan["dry_run"] else "updated"),
            ("delete", "to delete" if plan["dry_run"] else "deleted"),
            ("unchanged", "unchanged"),
            ("orphan", "not in the file (--prune deletes)"),
        )
        if s[a]
    )
    head = f"stack {plan['stack']}: {counts}"
    if plan["dry_run"]:
        head += " (dry run: nothing written)"
    lines = [head]
    width = max((len(f"{c['kind']} {c['name']}") for c in changed), default=0)
    for c in changed:
        what = f"{c['kind']} {c['name']}".ljust(width)
        notes = []
        if c.get("restart"):
            notes.append("would restart" if plan["dry_run"] else "restarted")
        if c.get("started"):
            notes.append("started")
        if c.get("error"):
            notes.append(f"error: {c['error']}")
        tail = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"  {MARKS[c['action']]} {what}  {c['action']}{tail}")
        if c["action"] == "update":
            for f in c["fields"]:
                lines.append(f"      {f['field']}: {_value(f['old'])} -> {_value(f['new'])}")
    return "\n".join(lines)


def _read(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from exc


def placed(exc: HeroError, path: str, text: str) -> HeroError:
    """A daemon's error naming a field, as `file:line: field: problem` (others unchanged)."""
    from hero_procd.stackfile import StackFileError, locate

    data = exc.data if isinstance(exc.data, dict) else {}
    field = data.get("field")
    if not isinstance(field, str):
        return exc
    problem = str(data.get("problem") or exc.message)
    located = StackFileError(path, locate(text, field), field, problem)
    err = StackError(str(located), {"file": path, "line": located.line, "field": field})
    err.code = exc.code
    return err


@click.command("apply")
@click.option(
    "-f", "--file", "path", required=True, metavar="FILE", help="The stack file ('-': stdin)."
)
@click.option("--dry-run", is_flag=True, help="Show the plan only; change nothing.")
@click.option("--prune", is_flag=True, help="Delete the stack's objects the file no longer has.")
@json_option
@click.pass_obj
def apply(s: Session, path: str, dry_run: bool, prune: bool) -> None:
    """Apply the stack file FILE: show the plan (field by field) and carry it out."""
    from hero_procd.stackfile import StackFileError, locate, not_json, parse

    text = _read(path)
    try:
        doc = parse(text, path)
        bad = not_json(doc)
        if bad is not None:
            raise StackFileError(path, locate(text, bad[0]), *bad)
    except StackFileError as exc:
        raise StackError(str(exc), {"file": path, "line": exc.line, "field": exc.field}) from exc
    try:
        plan = s.call("stack.apply", {**doc, "prune": prune, "dry_run": dry_run}, wait_s=60.0)
    except HeroError as exc:
        raise placed(exc, path, text) from exc
    s.show(plan, plan_text)
    failed = [c for c in plan["changes"] if c.get("error")]
    if failed:
        raise CliError(f"{len(failed)} change(s) failed after the commit; see above")


@click.command("export")
@click.option("--stack", help="The stack to export (default: the objects made by hand).")
@click.option("-o", "--output", "out", metavar="FILE", help="Write to FILE (default stdout).")
@json_option
@click.pass_obj
def export(s: Session, stack: str | None, out: str | None) -> None:
    """Write a stack's objects as a stack file that applies back to no change."""
    params = {"stack": stack} if stack is not None else {}
    doc = s.call("stack.export", params)
    if s.as_json:
        text = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        import tomli_w

        text = tomli_w.dumps(doc)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        Path(out).write_text(text, "utf-8")
    except OSError as exc:
        raise CliError(f"{out}: {exc.strerror or exc}") from exc
