"""stack.*: declared services, actions, schedules and groups, applied as one plan."""

from __future__ import annotations

from typing import Any

from hero_procd.app import App
from hero_procd.offload import offload
from hero_procd.params import Params
from hero_procd.rpc.registry import rpc
from hero_procd.stack import apply, export_doc, read_doc
from hero_procd.store.stacks import State

DEFAULT_EXPORT_NAME = "default"


@rpc("stack.apply")
async def stack_apply(app: App, p: Params) -> dict[str, Any]:
    """Plan a stack against the current state and apply it in one transaction."""
    prune = bool(p.boolean("prune", default=False))
    dry_run = bool(p.boolean("dry_run", default=False))
    # Reading the tables runs the *.define/*.set checks (and a timezone's zone list): a thread.
    doc = await offload(lambda: read_doc(p))
    p.finish()
    plan = await apply(app, [doc], prune=prune, dry_run=dry_run)
    return plan.result(doc.stack)


@rpc("stack.export")
async def stack_export(app: App, p: Params) -> dict[str, Any]:
    """A stack's objects (or those made by hand) as a stack document that applies back."""
    stack = p.text("stack", name_like=True)
    p.finish()
    state = await app.store.stacks.state()
    return export_doc(state, stack, stack or free_stack_name(state))


def free_stack_name(state: State) -> str:
    """`default`, or `default-N` if taken: the hand-made objects' file must never name an
    existing stack (applied with prune, it would delete that stack's objects)."""
    taken = {owner for kind in state.values() for _, owner in kind.values()}
    name, n = DEFAULT_EXPORT_NAME, 0
    while name in taken:
        n += 1
        name = f"{DEFAULT_EXPORT_NAME}-{n}"
    return name
