"""Services: one owner task per service (owner.py).

The registry of owners, the Supervisor, is engine/supervisor.py.
"""

from __future__ import annotations

from hero_procd.engine.services.owner import ServiceOwner

__all__ = ["ServiceOwner"]
