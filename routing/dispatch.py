"""After a transaction commits: schedule the lanes it asked for."""
from __future__ import annotations

from .effects import Effects


def dispatch(rt, effects: Effects) -> None:
    for lane, key in effects.schedules:
        rt.schedule(lane, key)
