"""Max-min fair sharing of a bounded set of slots between clients.

The public servers bound what they hold (connections, calls, subscribers) in all and
per client address. A per-client bound alone lets a few addresses fill every slot and
keep everyone else out for as long as they like. Once every slot is taken, a newcomer
holding at least two fewer slots than the client holding the most takes one of that
client's (its oldest); otherwise it is refused. Clients one apart are left alone, so
slots settle rather than churn, and a client holding one slot keeps it while anyone
holds three.
"""

from __future__ import annotations

from collections.abc import Mapping


def holder_to_evict(held: Mapping[str, int], newcomer: str) -> str | None:
    """The client whose oldest slot ``newcomer`` may take when every slot is taken
    (``held``: slots by client), or None: refuse the newcomer."""
    if not held:
        return None
    top = max(held, key=held.__getitem__)
    return top if held[top] >= held.get(newcomer, 0) + 2 else None
