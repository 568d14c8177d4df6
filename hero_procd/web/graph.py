"""A run's jobs and their dependencies as a layered graph, drawn as SVG on the server.

Layer = the longest chain of dependencies above a job (roots in layer 0), so
every edge points right; within a layer jobs keep their submission order.
No JavaScript and no layout library: a run is at most a few thousand jobs,
and this is a few list passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

NODE_W = 150
NODE_H = 34
GAP_X = 60
GAP_Y = 14
PAD = 10
STATUS_COLOURS = {
    "queued": "#9aa5b1",
    "running": "#3b82f6",
    "succeeded": "#22a06b",
    "failed": "#d64545",
    "cancelled": "#a77d2e",
    "timed_out": "#c2410c",
    "lost": "#7c3aed",
    "skipped": "#bbbbbb",
}


@dataclass(frozen=True)
class Node:
    """One job placed in the drawing."""

    job_id: int
    key: str
    status: str
    layer: int
    row: int

    @property
    def x(self) -> int:
        """Left edge."""
        return PAD + self.layer * (NODE_W + GAP_X)

    @property
    def y(self) -> int:
        """Top edge."""
        return PAD + self.row * (NODE_H + GAP_Y)


def layout(jobs: list[dict[str, Any]]) -> tuple[list[Node], list[tuple[Node, Node]]]:
    """Nodes in layers by longest dependency chain, and the edges (dependency → dependent)."""
    by_key = {str(j.get("key") or j["id"]): j for j in jobs}
    deps = {k: [d for d in j.get("depends_on", []) if d in by_key] for k, j in by_key.items()}
    # Kahn's order, longest path: iterative, so a chain of thousands does not recurse.
    waiting = {k: len(d) for k, d in deps.items()}
    dependents: dict[str, list[str]] = {k: [] for k in by_key}
    for key, ds in deps.items():
        for d in ds:
            dependents[d].append(key)
    layer = {k: 0 for k in by_key}
    ready = [k for k, n in waiting.items() if n == 0]
    while ready:
        key = ready.pop()
        for nxt in dependents[key]:
            layer[nxt] = max(layer[nxt], layer[key] + 1)
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)

    rows: dict[int, int] = {}
    nodes: dict[str, Node] = {}
    for key, job in by_key.items():
        lay = layer[key]
        row = rows.get(lay, 0)
        rows[lay] = row + 1
        nodes[key] = Node(int(job["id"]), key, str(job["status"]), lay, row)
    edges = [
        (nodes[dep], nodes[key])
        for key, job in by_key.items()
        for dep in job.get("depends_on", [])
        if dep in nodes
    ]
    return list(nodes.values()), edges


def svg(jobs: list[dict[str, Any]]) -> str:
    """The run's graph as an <svg> element (each node links to its job's page)."""
    nodes, edges = layout(jobs)
    width = PAD * 2 + (max((n.layer for n in nodes), default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + (max((n.row for n in nodes), default=0) + 1) * (NODE_H + GAP_Y) - GAP_Y
    out = [
        f'<svg class="run-graph" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="run graph">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#666"/></marker></defs>',
    ]
    for src, dst in edges:
        x1, y1 = src.x + NODE_W, src.y + NODE_H // 2
        x2, y2 = dst.x, dst.y + NODE_H // 2
        mid = (x1 + x2) // 2
        out.append(
            f'<path class="edge" d="M {x1} {y1} C {mid} {y1}, {mid} {y2}, {x2} {y2}" '
            'fill="none" stroke="#666" marker-end="url(#arrow)"/>'
        )
    for n in nodes:
        colour = STATUS_COLOURS.get(n.status, "#888888")
        label = escape(n.key if len(n.key) <= 18 else n.key[:17] + "…")
        out.append(
            f'<a href="/jobs/{n.job_id}" class="node" data-key="{escape(n.key)}" '
            f'data-status="{escape(n.status)}">'
            f'<rect x="{n.x}" y="{n.y}" width="{NODE_W}" height="{NODE_H}" rx="6" '
            f'fill="{colour}"/><text x="{n.x + 8}" y="{n.y + 14}" fill="#fff" '
            f'font-size="12">{label}</text><text x="{n.x + 8}" y="{n.y + 28}" fill="#fff" '
            f'font-size="10">#{n.job_id} {escape(n.status)}</text><title>{escape(n.key)}'
            f"</title></a>"
        )
    out.append("</svg>")
    return "".join(out)
