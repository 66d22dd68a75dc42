"""A seed's scenario: network conditions, partitions, crashes, Byzantine replicas, load.

Everything is drawn from ``random.Random`` seeded by (n, seed), so a seed
always produces the same scenario and the same run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from services.consensus.core.quorum import max_faulty

#: The chaos phase (ticks); then the network heals: no drops, partitions end,
#: crashed replicas are back. Byzantine replicas stay Byzantine.
CHAOS_TICKS = 240
#: Liveness bound: after the heal, every request must be executed by every
#: honest replica within this many ticks.
LIVENESS_BOUND = 900


@dataclass(frozen=True, slots=True)
class Partition:
    start: int
    end: int
    groups: tuple[frozenset[int], ...]


@dataclass(frozen=True, slots=True)
class Crash:
    replica: int
    at: int
    restart_at: int


@dataclass(frozen=True, slots=True)
class Rollback:
    """A backup of ``replica``'s storage taken at ``backup_at`` is restored at ``at``
    (the replica is down from ``at`` to ``restart_at``)."""

    replica: int
    backup_at: int
    at: int
    restart_at: int


@dataclass(frozen=True, slots=True)
class Submission:
    at: int
    number: int


@dataclass(frozen=True, slots=True)
class Scenario:
    seed: int
    n: int
    byzantine: dict[int, str]
    drop: float
    duplicate: float
    max_delay: int
    partitions: tuple[Partition, ...]
    crashes: tuple[Crash, ...]
    submissions: tuple[Submission, ...]
    #: Submissions the Byzantine client also sends as another copy to another replica:
    #: number -> "bad" (a bad signature, sent first) or "valid" (another valid signature).
    split_submissions: dict[int, str] = field(default_factory=dict)
    rollbacks: tuple[Rollback, ...] = ()
    heal_at: int = CHAOS_TICKS
    deadline: int = CHAOS_TICKS + LIVENESS_BOUND

    @property
    def honest(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.byzantine]

    def faults(self) -> list[str]:
        """The kinds of fault this scenario exercises (for the summary)."""
        kinds = []
        if self.drop:
            kinds.append("drop")
        if self.duplicate:
            kinds.append("duplicate")
        if self.max_delay > 1:
            kinds.append("delay_reorder")
        if self.partitions:
            kinds.append("partition_heal")
        if self.crashes:
            kinds.append("crash_restart")
        kinds.extend(f"byzantine_{kind}" for kind in sorted(set(self.byzantine.values())))
        if self.split_submissions:
            kinds.append("byzantine_client")
        if self.rollbacks:
            kinds.append("storage_rollback")
        return kinds


BYZANTINE_KINDS = ("equivocate", "censor", "forge", "silent", "twin", "withhold")
#: Kinds that matter most as the primary of view 0.
_PRIMARY_KINDS = ("equivocate", "censor", "silent", "twin", "withhold")


def make_scenario(seed: int, n: int) -> Scenario:
    rng = random.Random(f"cretoai-pbft-sim/{n}/{seed}")
    f = max_faulty(n)
    byzantine: dict[int, str] = {}
    if f and rng.random() < 0.8:
        for _ in range(rng.randint(1, f)):
            kind = rng.choice(BYZANTINE_KINDS)
            free = [i for i in range(n) if i not in byzantine]
            prefer_primary = kind in _PRIMARY_KINDS and 0 in free and rng.random() < 0.7
            byzantine[0 if prefer_primary else rng.choice(free)] = kind
    honest = [i for i in range(n) if i not in byzantine]

    drop = rng.choice((0.0, 0.0, 0.02, 0.1, 0.2))
    duplicate = rng.choice((0.0, 0.05, 0.15))
    max_delay = rng.choice((1, 3, 3, 8))

    partitions = []
    if n > 1 and rng.random() < 0.4:
        start = rng.randint(0, CHAOS_TICKS - 60)
        end = rng.randint(start + 20, CHAOS_TICKS)
        members = list(range(n))
        rng.shuffle(members)
        cut = rng.randint(1, n - 1)
        partitions.append(
            Partition(start, end, (frozenset(members[:cut]), frozenset(members[cut:])))
        )

    crashes = []
    if rng.random() < 0.45:
        for replica in rng.sample(honest, min(len(honest), rng.randint(1, 2))):
            at = rng.randint(0, CHAOS_TICKS - 40)
            crashes.append(Crash(replica, at, rng.randint(at + 5, CHAOS_TICKS)))

    count = rng.randint(6, 14)
    times = sorted(rng.randint(0, CHAOS_TICKS + 40) for _ in range(count))
    submissions = tuple(Submission(at=t, number=i) for i, t in enumerate(times))
    split: dict[int, str] = {}
    if n > 1 and rng.random() < 0.4:  # drawn last: the rest of a seed's scenario is unchanged
        for s in rng.sample(submissions, rng.randint(1, 3)):
            split[s.number] = rng.choice(("bad", "bad", "valid"))
    rollbacks = []
    # An operator restores an old backup on an honest replica. Losing signed state is
    # a fault of its own (it counts towards f), so it is drawn only where f >= 1 and
    # no replica is Byzantine.
    if not byzantine and f >= 1 and rng.random() < 0.5:
        replica = rng.choice(honest)
        backup_at = rng.randint(0, CHAOS_TICKS - 80)
        at = rng.randint(backup_at + 20, CHAOS_TICKS - 40)
        rollbacks.append(Rollback(replica, backup_at, at, rng.randint(at + 1, at + 30)))
    return Scenario(
        seed=seed,
        n=n,
        byzantine=byzantine,
        drop=drop,
        duplicate=duplicate,
        max_delay=max_delay,
        partitions=tuple(partitions),
        crashes=tuple(crashes),
        submissions=submissions,
        split_submissions=split,
        rollbacks=tuple(rollbacks),
    )
