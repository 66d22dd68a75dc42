"""Run one seed: build the cluster, play the scenario, check the invariants.

Invariants, checked as the run goes:

- agreement: no two honest replicas execute different batches at one seq, nor
  decide differently about any request of one (finalized or rejected);
- validity: batches hold what their digest commits to; only validly signed,
  submitted contents are finalized, each at most once per replica (invalid or
  repeated copies are rejected at execution, deterministically);
- certificates: every executed batch carries a valid finality certificate;
- durability: no honest replica ever signs two conflicting messages (across
  restarts too), no honest replica is banned, none halts or raises;
- liveness: after the heal, every submitted content is finalized by every honest
  replica within the bound.

A Byzantine *client* takes part too: for some submissions it sends a badly signed
copy of the content to one replica before the validly signed copy to another, or
two validly (differently) signed copies to two replicas.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from services.consensus.core.certificate import InvalidCertificate, check_certificate
from services.consensus.core.config import Config
from services.consensus.core.crypto import batch_digest
from services.consensus.core.messages import (
    Checkpoint,
    Envelope,
    Message,
    NewView,
    Request,
    SignedEnvelope,
    ViewChange,
)
from services.consensus.core.ready import Committed, Ready
from services.consensus.sim.actors import BYZANTINE, Actor, Forger
from services.consensus.sim.crypto import FastScheme, MlDsaScheme, Scheme, fast_request_hash
from services.consensus.sim.network import Network
from services.consensus.sim.node import Application, Node, Requests, Wire
from services.consensus.sim.scenario import Rollback, Scenario

_CLIENT_KEY = b"cretoai-sim-client"


def sim_config(n: int, replica_id: int) -> Config:
    """The replica parameters of the simulator (time in ticks)."""
    return Config(
        n=n,
        replica_id=replica_id,
        batch_max_count=4,
        batch_max_bytes=4096,
        batch_timeout=2,
        checkpoint_interval=4,
        watermark_window=8,
        view_change_timeout=40,
        max_backoff=3,
        request_timeout=40,
        progress_timeout=30,
        status_interval=8,
        pool_max=256,
        transfer_max_batches=8,
    )


#: A simulated signature: a nonce (signatures are randomized, like ML-DSA's) and a MAC
#: over content and nonce that only clients can make.
_NONCE, _MAC = 4, 8


def client_request(seed: int, number: int, *, nonce: int = 0, valid: bool = True) -> Request:
    """A signed copy of request ``number``'s content (``valid=False``: a bad signature).

    Copies with another nonce have the same content and another request hash.
    """
    content = f"req/{seed}/{number}/".encode()
    salt = nonce.to_bytes(_NONCE, "big")
    mac = hmac.new(_CLIENT_KEY, content + salt, hashlib.sha256).digest()[:_MAC]
    if not valid:
        mac = bytes(b ^ 0xFF for b in mac)
    body = content + salt + mac
    return Request(hash=fast_request_hash(body), body=body)


def content_of(body: bytes) -> bytes:
    """A request's content hash (the vertex hash): the body without its signature."""
    return hashlib.sha3_256(body[: -(_NONCE + _MAC)]).digest()


def valid_request(body: bytes) -> bool:
    """The signature check of a copy (like a vertex signature check)."""
    content, salt, mac = body[: -(_NONCE + _MAC)], body[-(_NONCE + _MAC) : -_MAC], body[-_MAC:]
    expected = hmac.new(_CLIENT_KEY, content + salt, hashlib.sha256).digest()[:_MAC]
    return body.startswith(b"req/") and hmac.compare_digest(mac, expected)


class ClientRequests(Requests):
    def content(self, body: bytes) -> bytes:
        return content_of(body)

    def signature_ok(self, body: bytes) -> bool:
        return valid_request(body)


class Violation(Exception):
    pass


@dataclass(slots=True)
class Executor:
    """The application state of one replica (survives crashes, as storage does)."""

    #: Contents finalized, in order.
    applied: list[bytes] = field(default_factory=list)
    applied_set: set[bytes] = field(default_factory=set)
    rejected: int = 0
    duplicates: int = 0


@dataclass(slots=True)
class SeedResult:
    seed: int
    n: int
    faults: list[str]
    violation: str | None = None
    liveness_failure: str | None = None
    #: Ticks from the heal until every request was applied everywhere.
    recovery_ticks: int | None = None
    ticks: int = 0
    requests: int = 0
    executed_batches: int = 0
    max_view: int = 0
    messages: int = 0
    #: Requests rejected at execution (invalid) and repeats skipped (already applied).
    rejected: int = 0
    duplicates: int = 0
    #: Messages honest replicas did not sign because of a signing floor (after a rollback).
    floor_refusals: int = 0
    attacks: dict[str, int] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violation is None and self.liveness_failure is None


def _conflict_key(signer: int, msg: Message) -> tuple[object, ...]:
    if isinstance(msg, Checkpoint):
        return (signer, "checkpoint", 0, msg.seq)
    if isinstance(msg, ViewChange):
        return (signer, "view_change", msg.new_view, 0)
    if isinstance(msg, NewView):
        return (signer, "new_view", msg.view, 0)
    return (signer, type(msg).__name__, msg.view, msg.seq)


def _conflict_value(env: SignedEnvelope) -> bytes:
    msg = env.signed.msg
    if isinstance(msg, Checkpoint):
        return msg.state_digest
    if isinstance(msg, ViewChange | NewView):
        return env.signed.body
    return msg.digest


class Simulation:
    def __init__(self, scenario: Scenario, *, crypto: str = "fast", trace: bool = False) -> None:
        self.sc = scenario
        n = scenario.n
        self.rng = random.Random(f"cretoai-pbft-run/{n}/{scenario.seed}")
        self.scheme: Scheme = (
            FastScheme(n, scenario.seed) if crypto == "fast" else MlDsaScheme(n, scenario.seed)
        )
        self.network = Network(self.rng, n)
        self.network.model.drop = scenario.drop
        self.network.model.duplicate = scenario.duplicate
        self.network.model.max_delay = scenario.max_delay
        self.tracing = trace
        self._event_ticks = {scenario.heal_at}
        for p in scenario.partitions:
            self._event_ticks |= {p.start, p.end}
        for c in scenario.crashes:
            self._event_ticks |= {c.at, c.restart_at}
        for rb in scenario.rollbacks:
            self._event_ticks |= {rb.backup_at, rb.at, rb.restart_at}
        self._backups: dict[int, tuple[dict[str, bytes], Application]] = {}
        self._event_ticks |= {s.at for s in scenario.submissions}
        self.result = SeedResult(seed=scenario.seed, n=n, faults=scenario.faults())
        self.now = 0
        self.decided: dict[int, bytes] = {}
        self.outcomes: dict[int, tuple[bool, ...]] = {}
        self.signed: dict[tuple[object, ...], bytes] = {}
        self.executors: dict[int, Executor] = {i: Executor() for i in scenario.honest}
        #: Content hash -> the valid copy the client submitted.
        self.submitted: dict[bytes, Request] = {}
        #: Content hash -> (the replica it was submitted to, when).
        self.targets: dict[bytes, tuple[int, int]] = {}
        self.crash_times: dict[int, list[int]] = {}
        self.actors: list[Actor] = []
        self.by_index: dict[int, list[Actor]] = {i: [] for i in range(n)}
        decoded: dict[bytes, tuple[Envelope | None, bool]] = {}
        for i in range(n):
            kind = scenario.byzantine.get(i)
            copies = 2 if kind == "twin" else 1
            for _ in range(copies):
                node = Node(
                    sim_config(n, i),
                    self.scheme,
                    fast_request_hash,
                    on_execute=self._executed,
                    decoded=decoded,
                    requests=ClientRequests(),
                )
                actor = (BYZANTINE[kind] if kind else Actor)(node, self.scheme, self.rng)
                self.actors.append(actor)
                self.by_index[i].append(actor)

    # --- tracing --------------------------------------------------------------------

    def _trace(self, text: str) -> None:
        if self.tracing:
            self.result.trace.append(f"{self.now:5d} {text}")

    # --- invariants -----------------------------------------------------------------

    def _executed(self, node: Node, c: Committed, reasons: list[str | None]) -> None:
        actor = next(a for a in self.by_index[node.index] if a.node is node)
        if not actor.honest:
            return
        i = node.index
        if self.decided.setdefault(c.seq, c.digest) != c.digest:
            raise Violation(f"agreement: replica {i} executed another batch at seq {c.seq}")
        if batch_digest(r.hash for r in c.requests) != c.digest:
            raise Violation(f"validity: replica {i} executed a batch unlike its digest at {c.seq}")
        cert = c.certificate
        if (cert.seq, cert.digest) != (c.seq, c.digest):
            raise Violation(f"certificate: replica {i} seq {c.seq} carries another batch's")
        try:
            check_certificate(cert, n=self.sc.n, verifier=self.scheme.verifier)
        except InvalidCertificate as exc:
            raise Violation(f"certificate: replica {i} seq {c.seq}: {exc}") from None
        outcomes = tuple(r is not None for r in reasons)
        if self.outcomes.setdefault(c.seq, outcomes) != outcomes:
            raise Violation(
                f"agreement: replica {i} decided other outcomes at seq {c.seq} "
                f"(rejected {outcomes}, others {self.outcomes[c.seq]})"
            )
        ex = self.executors[i]
        for r, reason in zip(c.requests, reasons, strict=True):
            if fast_request_hash(r.body) != r.hash:
                raise Violation(f"validity: replica {i} executed a body unlike its hash")
            content = content_of(r.body)
            if reason is not None:
                if reason.startswith("duplicate"):
                    ex.duplicates += 1
                else:
                    ex.rejected += 1
            elif not valid_request(r.body):
                raise Violation(f"validity: replica {i} finalized a badly signed copy")
            elif content in ex.applied_set:
                raise Violation(f"validity: replica {i} finalized one content twice")
            elif content not in self.submitted:
                raise Violation(f"validity: replica {i} applied a request nobody submitted")
            else:
                ex.applied.append(content)
                ex.applied_set.add(content)
        self.result.executed_batches = max(self.result.executed_batches, c.seq)
        self._trace(f"r{i} execute seq={c.seq} view={cert.view} requests={len(c.requests)}")

    def _check_ready(self, actor: Actor, rd: Ready) -> None:
        i = actor.index
        for out in rd.send:
            env = out.envelope
            if isinstance(env, SignedEnvelope) and env.signed.signer == i:
                key = _conflict_key(i, env.signed.msg)
                value = _conflict_value(env)
                if self.signed.setdefault(key, value) != value:
                    raise Violation(f"durability: honest replica {i} signed conflicting {key}")
        for banned in rd.bans:
            if banned not in self.sc.byzantine:
                raise Violation(f"reputation: replica {i} banned honest replica {banned}")
            self._trace(f"r{i} bans r{banned}")
        if self.tracing:
            for fault in rd.faults:
                self._trace(f"r{i} fault peer=r{fault.peer} {fault.kind.value} score={fault.score}")
            for ev in rd.evidence:
                self._trace(f"r{i} evidence against r{ev.first.signer}")

    # --- driving --------------------------------------------------------------------

    def _pump(self, actor: Actor) -> None:
        rd, wires = actor.drain()
        if actor.honest:
            self._check_ready(actor, rd)
        for wire in wires:
            self._send(actor.index, wire)

    def _send(self, src: int, wire: Wire) -> None:
        if self.tracing:
            kind = type(wire.envelope).__name__ if wire.envelope is not None else "bytes"
            if isinstance(wire.envelope, SignedEnvelope):
                kind = type(wire.envelope.signed.msg).__name__
            dst = "all" if wire.to is None else f"r{wire.to}"
            self._trace(f"r{src} -> {dst} {kind}")
        self.network.send(self.now, src, wire.to, wire.data)

    def _input(self, actor: Actor, action: Callable[..., object], *args: object) -> None:
        """Feed one input to an actor and carry out its Ready.

        An exception from an honest replica is a violation; a Byzantine actor
        that breaks itself just stops.
        """
        try:
            action(*args)
            self._pump(actor)
        except Violation:
            raise
        except Exception as exc:
            if actor.honest:
                raise Violation(
                    f"replica {actor.index} raised {type(exc).__name__}: {exc}"
                ) from exc
            actor.node.crash()

    def _submit(self, number: int) -> None:
        request = client_request(self.sc.seed, number)
        up = [i for i in self.sc.honest if self.by_index[i][0].up]
        if not up:
            return
        target = self.rng.choice(up)
        content = content_of(request.body)
        self.submitted[content] = request
        self.targets[content] = (target, self.now)
        split = self.sc.split_submissions.get(number)
        others = [i for i in range(self.sc.n) if i != target and self.by_index[i][0].up]
        if split is not None and others:
            # The Byzantine client: another copy of the content to another replica, first.
            other = self.rng.choice(others)
            copy = client_request(self.sc.seed, number, nonce=1, valid=split == "valid")
            self._trace(f"client sends a {split}ly signed copy of request {number} to r{other}")
            for actor in self.by_index[other]:
                if actor.up:
                    self._input(actor, actor.propose, copy)
        self._trace(f"submit request {number} to r{target}")
        actor = self.by_index[target][0]
        self._input(actor, actor.propose, request)

    def _events(self, now: int) -> None:
        if now not in self._event_ticks:
            return
        sc = self.sc
        for p in sc.partitions:
            if now == p.start:
                self.network.groups = list(p.groups)
                self._trace(f"partition {[sorted(g) for g in p.groups]}")
            elif now == p.end:
                self.network.groups = None
                self._trace("partition healed")
        for c in sc.crashes:
            actor = self.by_index[c.replica][0]
            if now == c.at and actor.up:
                actor.node.crash()
                self.crash_times.setdefault(c.replica, []).append(now)
                self._trace(f"crash r{c.replica}")
            elif now == c.restart_at and not actor.up:
                self._trace(f"restart r{c.replica} from its durable state")
                self._input(actor, actor.node.restart)
        for rb in sc.rollbacks:
            self._rollback_event(rb, now)
        if now == sc.heal_at:
            self._heal()
        for s in sc.submissions:
            if s.at == now:
                self._submit(s.number)

    def _rollback_event(self, rb: Rollback, now: int) -> None:
        actor = self.by_index[rb.replica][0]
        if now == rb.backup_at:
            self._backups[rb.replica] = actor.node.snapshot()
            self._trace(f"backup of r{rb.replica}")
        if now == rb.at:
            actor.node.crash()
            self.crash_times.setdefault(rb.replica, []).append(now)
            actor.node.roll_back(self._backups[rb.replica])
            # The application state is the backup's too (what it finalized is redone).
            ex = Executor()
            for c, reasons in zip(actor.node.app.log, actor.node.app.outcomes, strict=True):
                for r, reason in zip(c.requests, reasons, strict=True):
                    if reason is None:
                        ex.applied.append(content_of(r.body))
            ex.applied_set = set(ex.applied)
            self.executors[rb.replica] = ex
            self._trace(f"r{rb.replica} down; its storage restored from the backup")
        if now == rb.restart_at and not actor.up:
            self._trace(f"restart r{rb.replica} from the restored storage")
            self._input(actor, actor.node.restart)

    def _heal(self) -> None:
        self.network.groups = None
        self.network.model.drop = 0.0
        for i in self.sc.honest:
            actor = self.by_index[i][0]
            if not actor.up:
                self._input(actor, actor.node.restart)
        # A client whose replica crashed after taking its request submits it again.
        for h, (target, at) in self.targets.items():
            if any(crash >= at for crash in self.crash_times.get(target, ())):
                actor = self.by_index[self.rng.choice(self.sc.honest)][0]
                self._input(actor, actor.propose, self.submitted[h])
        self._trace("heal: no drops, no partitions, every replica up")

    def _live(self) -> bool:
        return all(h in ex.applied_set for ex in self.executors.values() for h in self.submitted)

    def run(self) -> SeedResult:
        sc = self.sc
        res = self.result
        try:
            for now in range(sc.deadline + 1):
                self.now = now
                self._events(now)
                for src, dst, data in self.network.due(now):
                    for actor in self.by_index[dst]:
                        if actor.up:
                            self._input(actor, actor.receive, src, data)
                for actor in self.actors:
                    if actor.up:
                        self._input(actor, actor.tick)
                if now >= sc.heal_at and now % 5 == 0 and self._live():
                    res.recovery_ticks = now - sc.heal_at
                    break
            else:
                missing = sum(
                    1
                    for ex in self.executors.values()
                    for h in self.submitted
                    if h not in ex.applied_set
                )
                res.liveness_failure = (
                    f"{missing} (replica, request) pairs unexecuted {sc.deadline - sc.heal_at} "
                    "ticks after the heal"
                )
        except Violation as exc:
            res.violation = str(exc)
        res.ticks = self.now
        res.requests = len(self.submitted)
        res.messages = self.network.stats.sent
        res.max_view = max(a.node.replica.view for a in self.actors)
        res.rejected = sum(ex.rejected for ex in self.executors.values())
        res.duplicates = sum(ex.duplicates for ex in self.executors.values())
        res.floor_refusals = sum(a.node.replica.refused_by_floor for a in self.actors if a.honest)
        for actor in self.actors:
            if isinstance(actor, Forger):
                for name, count in actor.attacks.items():
                    res.attacks[name] = res.attacks.get(name, 0) + count
        return res


def run_seed(seed: int, n: int, *, crypto: str = "fast", trace: bool = False) -> SeedResult:
    from services.consensus.sim.scenario import make_scenario

    return Simulation(make_scenario(seed, n), crypto=crypto, trace=trace).run()
