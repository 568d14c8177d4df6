"""Stack files: placing fields at their lines, reading tables, plans on a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.errors import Conflict, InvalidParams
from hero_procd.params import Params
from hero_procd.stack import apply, export_doc, load_dir, read_doc
from hero_procd.stackfile import StackFileError, locate, parse
from hero_procd.store import Store

TEXT = """\
stack = "demo"

[services.api]
command = ["api"]
restart = "always"

[services.api.env]
PORT = "8080"

[services.db]
command = ["db"]

[groups.io]
max_parallel = 2
"""


@pytest.mark.parametrize(
    ("field", "line"),
    [
        ("stack", 1),
        ("services.api", 3),
        ("services.api.restart", 5),
        ("services.api.command", 4),
        ("services.api.env.PORT", 8),
        ("services.api.env", 7),
        ("services.api.cwd", 3),  # absent key: its table's header
        ("services.db.command", 11),
        ("groups.io.max_parallel", 14),
        ("services.api.health.exec[0]", 3),
        ("nothing.here", None),
        (None, None),
    ],
)
def test_locate_finds_the_line_of_a_field(field: str | None, line: int | None) -> None:
    assert locate(TEXT, field) == line


def test_locate_dotted_keys_and_inline_tables() -> None:
    text = 'stack = "x"\nservices.web.command = ["a"]\ngroups = { io = { max_parallel = 0 } }\n'
    assert locate(text, "services.web.command") == 2
    assert locate(text, "groups.io.max_parallel") == 3


def test_parse_names_the_line_of_a_syntax_error_and_refuses_unknown_keys() -> None:
    with pytest.raises(StackFileError) as caught:
        parse(TEXT.replace("max_parallel = 2", "max_parallel = = 2"), "f.toml")
    assert caught.value.line == 14 and str(caught.value).startswith("f.toml:14: ")
    with pytest.raises(StackFileError) as caught:
        parse(TEXT + "[volumes.x]\n", "f.toml")
    assert (caught.value.line, caught.value.field) == (15, "volumes")
    with pytest.raises(StackFileError) as caught:
        parse("[services.x]\ncommand = ['a']\n", "f.toml")
    assert caught.value.field == "stack"


def test_tables_are_read_by_the_define_and_set_checks() -> None:
    doc = read_doc(Params(parse(TEXT, "f")))
    assert doc.objects["services"]["db"]["restart"] == "on-failure"  # defaults filled in
    bad: list[tuple[dict[str, Any], str]] = [
        ({"services": {"x": {"command": ["a"], "retries": 1}}}, "services.x.retries"),
        ({"services": {"x": {"script": "a", "command": ["b"]}}}, "services.x.script"),
        ({"services": {"x": {"command": ["a"], "nope": 1}}}, "services.x.nope"),
        ({"services": {"bad name": {"command": ["a"]}}}, "services.bad name"),
        ({"actions": {"a": {"cwd": "/"}}}, "actions.a.command"),
        ({"schedules": {"s": {"cron": "0 3 * * *"}}}, "schedules.s.job"),
        ({"schedules": {"s": {"cron": "0 3 * * *", "job": {"x": 1}}}}, "schedules.s.job.x"),
        ({"schedules": {"s": {"cron": "x", "job": {"command": ["a"]}}}}, "schedules.s.cron"),
        ({"groups": {"g": {"max_parallel": 0}}}, "groups.g.max_parallel"),
        ({"groups": []}, "groups"),
    ]
    for tables, field in bad:
        with pytest.raises(InvalidParams) as caught:
            read_doc(Params({"stack": "s", **tables}))
        assert caught.value.field == field, (tables, caught.value)


def test_load_dir_checks_every_file_and_places_errors(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(TEXT)
    (tmp_path / "b.toml").write_text('stack = "b"\n\n[groups.g]\nmax_parallel = -1\n')
    with pytest.raises(StackFileError) as caught:
        load_dir(tmp_path)
    assert str(caught.value) == f"{tmp_path / 'b.toml'}:4: groups.g.max_parallel: must be >= 1"
    (tmp_path / "b.toml").write_text(TEXT)
    with pytest.raises(StackFileError, match="declared by"):
        load_dir(tmp_path)


def _run(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        store = await Store.open(tmp_path / "s.db", readers=1)
        app = App(config=Config(db_path=tmp_path / "s.db"), store=store, openrpc={})
        try:
            await body(app)
        finally:
            await store.close()

    asyncio.run(main())


def test_plans_on_a_real_store(tmp_path: Path) -> None:
    demo = read_doc(Params(parse(TEXT, "f")))
    other = read_doc(Params({"stack": "other", "groups": {"cpu": {"max_parallel": 1}}}))

    async def body(app: App) -> None:
        first = await apply(app, [demo, other], prune=False, dry_run=False)
        assert first.result("demo")["summary"]["create"] == 3
        again = await apply(app, [demo], prune=False, dry_run=False)
        assert not again.result("demo")["changed"]
        # Removed from the file: an orphan without prune, deleted with it; "other" stays.
        smaller = read_doc(Params({"stack": "demo", "services": {"db": {"command": ["db"]}}}))
        plan = await apply(app, [smaller], prune=False, dry_run=True)
        assert {c.name: c.action for c in plan.changes} == {
            "db": "unchanged",
            "api": "orphan",
            "io": "orphan",
        }
        await apply(app, [smaller], prune=True, dry_run=False)
        assert [s.name for s in await app.store.services.list()] == ["db"]
        assert await app.store.groups.all() == {"cpu": 1}
        # Another stack's object is refused; a cycle is refused with its field.
        with pytest.raises(Conflict):
            await apply(
                app,
                [read_doc(Params({**_as_params(other), "stack": "x"}))],
                prune=False,
                dry_run=False,
            )
        cyc = {"a": {"command": ["a"], "requires": ["b"]}, "b": {"command": ["b"], "after": ["a"]}}
        with pytest.raises(InvalidParams) as caught:
            await apply(
                app, [read_doc(Params({"stack": "c", "services": cyc}))], prune=False, dry_run=False
            )
        assert caught.value.field == "services.a.requires"
        assert {s.name for s in await app.store.services.list()} == {"db"}
        exported = export_doc(await app.store.stacks.state(), "demo", "demo")
        assert exported == {"stack": "demo", "services": {"db": {"command": ["db"]}}}

    _run(tmp_path, body)


def _as_params(doc: Any) -> dict[str, Any]:
    return {"stack": doc.stack, **{k: v for k, v in doc.objects.items() if v}}
