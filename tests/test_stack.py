"""Stack files: placing fields at their lines, reading tables, plans on a real store."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from hero_procd.app import App
from hero_procd.config import Config
from hero_procd.errors import Conflict, InvalidParams
from hero_procd.params import Params
from hero_procd.stack import apply, describe_error, export_doc, load_dir, read_doc
from hero_procd.stackfile import StackFileError, locate, parse, too_deep
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


ARRAY_OF_TABLES = """\
stack = "s"

[schedules.nightly]
cron = "0 3 * * *"

[[schedules.nightly.run.jobs]]
key = "a"
command = ["true"]

[[schedules.nightly.run.jobs]]
key = "b"
command = "true"
"""

FAKE_HEADER_IN_A_STRING = """\
stack = "s"

[services.api]
script = '''
[services.web]
restart = "x"
'''

[services.web]
command = ["x"]
restart = "bad"
"""


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        # The second element of an array of tables, not the first (nor the parent table).
        (ARRAY_OF_TABLES, "schedules.nightly.run.jobs[1].command", 12),
        (ARRAY_OF_TABLES, "schedules.nightly.run.jobs[0].command", 8),
        (ARRAY_OF_TABLES, "schedules.nightly.run.jobs[1].priority", 10),
        (ARRAY_OF_TABLES, "schedules.nightly.cron", 4),
        # Text inside a multi-line string is not a header or a key.
        (FAKE_HEADER_IN_A_STRING, "services.web.restart", 11),
        (FAKE_HEADER_IN_A_STRING, "services.api.script", 4),
        # The dotted key's own line, not the object's first.
        (
            'stack = "s"\nservices.web.command = ["x"]\nservices.web.restart = "bad"\n',
            "services.web.restart",
            3,
        ),
        # A quoted key with a dot in it, as text_map names it.
        (
            'stack = "s"\n[services.w]\ncommand = ["x"]\n[services.w.env]\n"a.b" = 5\n',
            "services.w.env.'a.b'",
            5,
        ),
        (
            'stack = "s" # [services.x]\n[services . "x"]  # a comment\nrestart = 1\n',
            "services.x.restart",
            3,
        ),
        # Lines inside a value spread over lines are neither headers nor keys.
        (
            'stack = "s"\n[services.w]\ncommand = [\n  ["nested"],\n  "restart",\n]\n'
            'restart = "bad"\n',
            "services.w.restart",
            7,
        ),
    ],
)
def test_locate_follows_the_toml_structure(text: str, field: str, line: int) -> None:
    assert locate(text, field) == line


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


def test_a_file_cut_short_is_placed_on_its_last_line() -> None:
    # tomllib says "at end of document" with no line: the last line is where it stops.
    with pytest.raises(StackFileError) as caught:
        parse('stack = "a"\n[services.x]\ncommand = ["sle', "f.toml")
    assert caught.value.line == 3 and str(caught.value).startswith("f.toml:3: Unterminated")


def test_load_dir_skips_hidden_names_and_refuses_what_is_not_a_small_regular_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.toml").write_text(TEXT)
    (tmp_path / ".#a.toml").symlink_to("user@host.1:2")  # emacs' lock: dangling
    (tmp_path / ".a.toml").write_text("not toml [")
    assert [d.stack for d in load_dir(tmp_path)] == ["demo"]
    (tmp_path / "d.toml").mkdir()
    with pytest.raises(StackFileError, match=r"d\.toml: not a regular file"):
        load_dir(tmp_path)
    (tmp_path / "d.toml").rmdir()
    with open(tmp_path / "big.toml", "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)  # sparse: no disk used
    with pytest.raises(StackFileError, match=r"big\.toml: larger than 16 MiB"):
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


@pytest.mark.parametrize("seed", range(50))
def test_locate_never_fails_on_odd_text(seed: int) -> None:
    # It runs on the error path: an exception here would replace the error it places.
    rng = random.Random(seed)
    alphabet = "[]{}.=\"'#\\ \n\tabc1_-"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
    field = "".join(rng.choice("ab.[]'\"1") for _ in range(rng.randint(0, 12)))
    line = locate(text, field)
    assert line is None or 1 <= line <= max(1, len(text.splitlines()))


def test_too_deep_counts_brackets_outside_strings_and_comments() -> None:
    assert too_deep('a = """\n' + "[" * 40 + '\n"""\nb = 1\n') is None
    assert too_deep("a = '" + "{" * 40 + "'\n# " + "[" * 40 + "\n") is None
    assert too_deep("a = 1\nb = " + "[" * 33 + "]" * 33 + "\n") == 2
    assert too_deep('a = """x\n\n"""\nb = ' + "[" * 33 + "\n") == 4
    assert too_deep("a = " + "[" * 32 + "]" * 32) is None
    with pytest.raises(StackFileError, match="nested too deeply"):
        parse('stack = "s"\nx = ' + "[" * 2000 + "]" * 2000, "f.toml")


@pytest.mark.parametrize("seed", range(50))
def test_too_deep_never_fails_on_odd_text(seed: int) -> None:
    rng = random.Random(seed)
    text = "".join(rng.choice("[]{}\"'#\\\n ab") for _ in range(rng.randint(0, 300)))
    line = too_deep(text, limit=3)
    assert line is None or 1 <= line <= text.count("\n") + 1


DOTTED_NAMES = """\
stack = "s"

[services."web.1"]
command = ["x"]

[services."web.1".env]
K = "v"

[services.web]
command = ["y"]
restart = "bad"
"""


@pytest.mark.parametrize(
    ("field", "line"),
    [
        # Names may hold dots (web.1): the field path is then ambiguous; the file decides.
        ("services.web.1.command", 4),
        ("services.web.1.env.K", 7),
        ("services.web.restart", 11),
        ("services.web.1.cwd", 3),
    ],
)
def test_locate_objects_whose_names_hold_dots(field: str, line: int) -> None:
    assert locate(DOTTED_NAMES, field) == line


def test_a_config_dir_error_under_a_dotted_name_names_its_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('stack = "a"\n\n[services."api.v2"]\ncommand = "x"\n')
    with pytest.raises(StackFileError) as caught:
        load_dir(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'a.toml'}:4: services.api.v2.command")
    # An error found when planning (a conflict, a cycle) is placed the same way.
    (tmp_path / "a.toml").write_text(
        'stack = "a"\n\n[services."api.v2"]\ncommand = ["x"]\nrequires = ["api.v2"]\n'
    )
    (tmp_path / "b.toml").write_text('stack = "b"\n[services.api]\ncommand = ["y"]\n')
    docs = load_dir(tmp_path)
    error = InvalidParams("services.api.v2.requires", "dependency cycle: api.v2 -> api.v2")
    assert describe_error(docs, error).startswith(f"{tmp_path / 'a.toml'}:5: ")
    error = InvalidParams("services.api.command", "whatever")
    assert describe_error(docs, error).startswith(f"{tmp_path / 'b.toml'}:3: ")


def test_a_conflict_with_the_owning_stack_is_placed_in_the_other_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('stack = "a"\n[groups.g]\nmax_parallel = 1\n')
    (tmp_path / "z.toml").write_text('stack = "z"\n\n[groups.g]\nmax_parallel = 2\n')
    docs = load_dir(tmp_path)
    error = Conflict("group g belongs to stack a", {"field": "groups.g", "stack": "a"})
    assert describe_error(docs, error).startswith(f"{tmp_path / 'z.toml'}:3: groups.g: ")
