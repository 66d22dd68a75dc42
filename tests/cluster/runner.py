"""Cluster tests as data: a scenario file names the nodes, the load and the faults; one
runner carries it out on a real multi-process cluster on loopback and checks it through
the public REST API only (in the style of CometBFT's e2e manifests).

Stages: setup (keys and configs on free ports) → start (every service of every node as a
process) → load (vertices spread over the gateways of the honest nodes) with perturbations
fired at given points of the load → wait (everything required is final everywhere) → check
(identical finalized logs on all honest nodes, outcomes included; every vertex acknowledged
as final is in them, finalized once; certificates verify against the validator set) → stop.

Scenario format (TOML)::

    description = "SIGKILL the primary; view change; restart; catch up"
    nodes = 4
    vertices = 60          # submitted in total
    wait_every = 10        # every Nth submission uses ?wait=true (and becomes a parent)
    timeout_s = 120        # bound for the wait stage
    byzantine = {node = "node4", mode = "equivocate"}   # optional

    [[step]]
    after = 20             # fires once this many vertices were submitted
    action = "kill"        # kill | restart | stop | cont | partition | heal
    node = "primary"       # a node name, "primary" (asked at fire time) or a label
    service = "consensus"  # optional: one service instead of the whole node
    label = "victim"       # optional: name the chosen node for later steps

Client-signed copies (signed with a fresh ML-DSA-87 client key, not a validator's; the
vertices have no parents and do not count towards ``after``)::

    [[step]]
    after = 5
    action = "split_copies"  # a copy with a corrupted signature to `node`, which must
    node = "node2"           #   answer 422 bad_signature; then the valid copy to `to`
    to = "node1"             #   with ?wait=true, which must answer 200 finalized
    count = 2                # optional: this many vertices, one after the other (1)

    [[step]]
    after = 30
    action = "twin_copies"   # one content signed twice (ML-DSA-87 signing is randomized):
    node = "node2"           #   both valid copies at once, one to `node` and one to `to`,
    to = "node3"             #   ?wait=true: both 200 finalized, at one seq

    [expect]                 # optional
    banned = true            # the Byzantine node ends up banned by every honest node
    evidence = true          # every honest node holds equivocation evidence
    reputation_intact = true # no honest node charged an honest peer: each one keeps the
                             #   starting reputation (services/consensus/core/reputation.py)
                             #   and is not banned

Every vertex of a copies step must end up ``finalized`` at one seq on every live honest
node (``GET /v1/vertices/{hash}`` on each gateway), and its content be finalized once.

Backup and restore (the operator's commands, as child processes: ``cretoai-node backup``
through the running storage service, ``cretoai-node restore --force`` while the node is
stopped)::

    [[step]]
    after = 10
    action = "backup"        # cretoai-node backup --config F --output DIR of a running node
    node = "primary"         #   (DIR under the scenario's directory; its last_seq recorded)
    label = "restored"

    [[step]]
    after = 40
    action = "stop_node"     # SIGTERM every service (or `service`) in reverse start order,
    node = "restored"        #   each waited for: a clean stop, held (not restarted)
    settle = true            # optional, any step: first wait until every accepted vertex is
                             #   final on every live honest node (no request left pending)
    off_checkpoint = true    # optional, with settle: if the last seq is a checkpoint (a
                             #   multiple of consensus.checkpoint_interval), finalize one more
                             #   vertex, so peers keep slots above their stable checkpoint

    [[step]]
    after = 40
    action = "restore"       # cretoai-node restore --force from the node's last backup (the
    node = "restored"        #   node must be stopped); its output is kept for [expect]

    (or action = "wipe": delete the stopped node's whole data directory, database and
    signing mark, keeping its key and config: a disk replaced)

    [[step]]
    after = 40
    action = "start_node"    # start the stopped services again, in start order; wait serving
    node = "restored"

    [expect]
    evidence = 0             # no live node holds equivocation evidence (/v1/status), none
                             #   counted (cretoai_consensus_evidence_total), nobody banned
    signing_floor = true     # every restored node: restore's output explains the signing
                             #   mark and state transfer; the consensus log warns of the
                             #   floor; cretoai_consensus_signing_floor_seq (its consensus
                             #   /metrics) is above the backup's last_seq; no node bans it;
                             #   it reaches the others' last seq
    floor_refusals = true    # ... and cretoai_consensus_signing_floor_refusals_total > 0: it did
                             #   decline to sign something at or below the floor
    pool_bounded = true      # every honest node dropped some of the Byzantine node's forwarded
                             #   requests for its share of the pool
                             #   (cretoai_consensus_peer_requests_dropped_total > 0), and its
                             #   pool holds at most consensus.pool_max_bytes
    vouched = true           # the nodes verified at most 1.2 (f+1) vertex signatures per
                             #   finalized vertex (n without vouching), and took some copies
                             #   as valid because f+1 members vouched for them
    invalid_rejected = true  # badly signed copies were ordered; like every scenario, it checks
                             #   that each finalized vertex has a validly signed copy
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from cretoai import registry
from cretoai.config import NodeConfig, load_config
from cretoai.crypto import NodeKey, get_backend
from cretoai.v1 import vertex_pb2
from cretoai.vertex import CONTEXT as VERTEX_CONTEXT
from cretoai.vertex import canonical_bytes, make_vertex, verify_vertex, vertex_hash
from node.clusterinit import ClusterLayout, init_cluster
from node.supervisor import Supervisor
from services.consensus.core.certificate import (
    InvalidCertificate,
    verify_certificate,
    verify_inclusion,
)
from services.consensus.core.reputation import Reputation
from services.storage.store import BACKUP_MANIFEST

#: Steps that post client-signed copies of a vertex (they need ``to``).
COPY_ACTIONS = {"split_copies", "twin_copies"}
#: Steps of an operator: back up a running node, stop it cleanly, restore, start it again.
OPERATOR_ACTIONS = {"backup", "stop_node", "restore", "wipe", "start_node"}
ACTIONS = {"kill", "restart", "stop", "cont", "partition", "heal", "mute", "unmute"}
ACTIONS |= COPY_ACTIONS
ACTIONS |= OPERATOR_ACTIONS
SCENARIOS = Path(__file__).parent / "scenarios"
#: Answers after which a POST is sent again (the node sheds load, or is briefly down).
RETRY_STATUSES = {429, 503, 504}
#: What the consensus service logs when it starts on storage older than its signing mark.
FLOOR_WARNING = "storage is older than what this replica signed"
#: Consensus log lines that tell how a replica reached its view (with view= and seq=).
VIEW_MESSAGES = ("view change", "new view active", "replica restored")
#: Execution's log line when what it finalized lately disagrees with storage.
RECENT_MISMATCH = "what this process finalized lately disagrees with storage"
#: How long a service may take to stop on SIGTERM before it counts as an unclean stop.
STOP_GRACE_S = 15.0


def starting_reputation() -> int:
    """The score every peer starts with (scores only fall: any charge lowers it)."""
    return Reputation(n=1, threshold=0, flood_allowance=0).scores[0]


def client_key() -> NodeKey:
    """A fresh ML-DSA-87 key of a client that signs its own vertices (not a validator's)."""
    private = get_backend("cryptography").private_key_from_seed(os.urandom(32))
    return NodeKey(private=private, path=Path("<scenario client>"))


def signed_body(vertex: vertex_pb2.Vertex, signature: bytes) -> dict[str, Any]:
    """The REST body of a client-signed vertex, carrying ``signature`` as its signature."""
    return {
        "payload": base64.b64encode(vertex.payload).decode(),
        "parents": [p.hex() for p in vertex.parents],
        "public_key": vertex.creator.hex(),
        "signature": signature.hex(),
        "timestamp_ms": vertex.timestamp_ms,
    }


def corrupted(signature: bytes) -> bytes:
    """The same signature with one bit flipped in the middle (same length: a valid shape)."""
    flipped = bytearray(signature)
    flipped[len(flipped) // 2] ^= 0x01
    return bytes(flipped)


def batch_outcome(batch: dict[str, Any]) -> dict[str, Any]:
    """What every honest node must agree on about one finalized batch."""
    return {
        "batch_digest": batch["batch_digest"],
        "state_digest": batch["state_digest"],
        "vertices": [v["hash"] for v in batch["vertices"]],
        "rejected": batch["rejected"],
    }


def vertex_from_json(data: dict[str, Any]) -> vertex_pb2.Vertex:
    """The gateway's JSON form of a vertex (a record, or an entry of a batch)."""
    return vertex_pb2.Vertex(
        payload=base64.b64decode(data["payload"]),
        parents=[bytes.fromhex(p) for p in data["parents"]],
        creator=bytes.fromhex(data["public_key"]),
        timestamp_ms=int(data["timestamp_ms"]),
        signature=bytes.fromhex(data["signature"]),
    )


def batch_from_json(data: dict[str, Any]) -> vertex_pb2.FinalizedBatch:
    """The gateway's JSON form of a finalized batch (``/v1/finalized``)."""
    return vertex_pb2.FinalizedBatch(
        seq=int(data["seq"]),
        batch_digest=bytes.fromhex(data["batch_digest"]),
        vertices=[vertex_from_json(v) for v in data["vertices"]],
        rejected=[bytes.fromhex(h) for h in data["rejected"]],
        certificate=certificate_from_json(data["certificate"]),
        state_digest=bytes.fromhex(data["state_digest"]),
    )


def certificate_from_json(data: dict[str, Any]) -> vertex_pb2.FinalityCertificate:
    """The gateway's JSON form of a finality certificate, back to its protobuf."""
    return vertex_pb2.FinalityCertificate(
        view=int(data["view"]),
        seq=int(data["seq"]),
        batch_digest=bytes.fromhex(data["batch_digest"]),
        commits=[
            vertex_pb2.SignedMessage(
                signer=int(c["signer"]),
                body=bytes.fromhex(c["body"]),
                signature=bytes.fromhex(c["signature"]),
            )
            for c in data["commits"]
        ],
    )


class ScenarioFailed(AssertionError):
    """An invariant or a bounded wait failed; the message says which and where."""


@dataclass(frozen=True)
class Step:
    after: int
    action: str
    node: str
    service: str | None = None
    label: str | None = None
    #: Copies steps: the node that gets the (other) valid copy.
    to: str | None = None
    #: Copies steps: how many vertices, one after the other.
    count: int = 1
    #: First wait until every accepted vertex is final on every live honest node.
    settle: bool = False
    #: With settle: when the last seq is a checkpoint, finalize one more vertex first.
    off_checkpoint: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    nodes: int
    vertices: int
    wait_every: int
    timeout_s: float
    steps: tuple[Step, ...]
    byzantine_node: str | None = None
    byzantine_mode: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    #: The Byzantine node must end up banned by every honest node.
    expect_banned: bool = False
    #: Every honest node must hold equivocation evidence.
    expect_evidence: bool = False
    #: No honest node may charge (or ban) an honest peer.
    expect_reputation_intact: bool = False
    #: No node may hold (or count) equivocation evidence, nor ban anyone.
    expect_no_evidence: bool = False
    #: Every restored node set a signing floor above its backup and rejoined.
    expect_signing_floor: bool = False
    #: ... and declined to sign something because of it.
    expect_floor_refusals: bool = False
    #: Every honest node dropped forwards for a peer's pool share, within the pool bound.
    expect_pool_bounded: bool = False
    #: Vouched verification saved verifications (fewer than n per vertex, some vouched).
    expect_vouched: bool = False
    #: Badly signed copies were ordered (and, as every finalized vertex must have a validly
    #: signed copy, rejected).
    expect_invalid_rejected: bool = False

    @classmethod
    def load(cls, path: Path) -> Scenario:
        data = tomllib.loads(path.read_text())
        steps = tuple(Step(**raw) for raw in data.get("step", []))
        for step in steps:
            if step.action not in ACTIONS:
                raise ValueError(f"{path}: unknown action {step.action!r}")
            if step.action in COPY_ACTIONS and (step.to is None or step.count < 1):
                raise ValueError(f"{path}: {step.action} needs `to` and a count of at least 1")
            if step.off_checkpoint and not step.settle:
                raise ValueError(f"{path}: off_checkpoint needs settle")
        byz = data.get("byzantine", {})
        expect = data.get("expect", {})
        evidence = expect.get("evidence", False)
        if not isinstance(evidence, bool) and evidence != 0:
            raise ValueError(f"{path}: [expect] evidence is true (everywhere) or 0 (nowhere)")
        return cls(
            name=path.stem,
            description=data["description"],
            nodes=int(data["nodes"]),
            vertices=int(data.get("vertices", 40)),
            wait_every=int(data.get("wait_every", 10)),
            timeout_s=float(data.get("timeout_s", 120)),
            steps=steps,
            byzantine_node=byz.get("node"),
            byzantine_mode=byz.get("mode", ""),
            settings=data.get("settings", {}),
            expect_banned=bool(expect.get("banned", False)),
            expect_evidence=evidence is True,
            expect_reputation_intact=bool(expect.get("reputation_intact", False)),
            expect_no_evidence=not isinstance(evidence, bool) and evidence == 0,
            expect_signing_floor=bool(expect.get("signing_floor", False)),
            expect_floor_refusals=bool(expect.get("floor_refusals", False)),
            expect_pool_bounded=bool(expect.get("pool_bounded", False)),
            expect_vouched=bool(expect.get("vouched", False)),
            expect_invalid_rejected=bool(expect.get("invalid_rejected", False)),
        )


@dataclass
class Ledger:
    """What the clients were told: accepted (202) and acknowledged-final (200) vertices."""

    accepted: dict[str, str] = field(default_factory=dict)  # hash -> node it was given to
    final: set[str] = field(default_factory=set)
    at_risk: set[str] = field(default_factory=set)  # given to a node that was then killed
    copies: dict[str, str] = field(default_factory=dict)  # hash -> the copies step's tag


@dataclass(frozen=True)
class Backup:
    """A backup taken by a ``backup`` step."""

    path: Path
    last_seq: int


@dataclass(frozen=True)
class Restored:
    """A ``restore`` step: the backup it put back, and what ``cretoai-node restore`` said."""

    backup: Backup
    output: str


class ClusterRun:
    """One scenario on one real cluster; use as ``async with ClusterRun(...) as run``."""

    def __init__(self, scenario: Scenario, directory: Path, base_port: int) -> None:
        self.scenario = scenario
        self.directory = directory
        self.base_port = base_port
        self.layout: ClusterLayout | None = None
        self.configs: list[NodeConfig] = []
        self.supervisor: Supervisor | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ledger = Ledger()
        self.down: set[str] = set()  # nodes killed or stopped right now
        self.partitioned: set[str] = set()
        self.labels: dict[str, str] = {}
        self.events: list[str] = []
        self.client = client_key()
        self.backups: dict[str, Backup] = {}  # node -> its last backup
        self.restored: dict[str, Restored] = {}  # node -> its last restore
        self.extra_vertices = 0  # finalized by off_checkpoint (outside the scenario's count)
        self.pool_figures: dict[str, dict[str, float]] = {}  # by check_pool_bounded
        self.verification_figures: dict[str, float] = {}  # by check_verifications
        self.invalid_copies_ordered = 0  # by check_signatures
        self.recent_decided = 0  # by check_recent: batches whose statuses recent decided

    # -- setup / start / stop ---------------------------------------------------------

    async def __aenter__(self) -> ClusterRun:
        s = self.scenario
        # Execution's statuses from what each process finalized lately are checked
        # against storage's in every scenario (check_recent).
        extra: dict[str, Any] = {
            "fault_injection": {"enabled": True},
            "consensus": {"cross_check_recent": True},
        }
        for section, values in s.settings.items():
            extra.setdefault(section, {}).update(values)
        self.layout = init_cluster(
            self.directory,
            s.nodes,
            http_port=self.base_port + 20 * s.nodes,
            base_port=self.base_port,
            extra=extra,
        )
        if s.byzantine_node:
            node = next(n for n in self.layout.nodes if n.name == s.byzantine_node)
            data = tomllib.loads(node.config.read_text())
            data["fault_injection"]["byzantine"] = s.byzantine_mode
            node.config.write_text(tomli_w.dumps(data))
        self.configs = [load_config(n.config, environ={}) for n in self.layout.nodes]
        self.supervisor = Supervisor(self.configs, log_dir=lambda c: c.data_dir.parent / "logs")
        self.supervisor.on_event = self.events.append
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        try:
            await self.supervisor.start(timeout=120)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.supervisor is not None:
            await self.supervisor.stop()

    def logs_tail(self, lines: int = 15) -> str:
        """The last lines of every service log (for failure messages)."""
        out = []
        for cfg in self.configs:
            for log_file in sorted((cfg.data_dir.parent / "logs").glob("*.log")):
                tail = log_file.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {cfg.node.name}/{log_file.name}\n" + "\n".join(tail))
        return "\n".join(out)

    # -- the public API -----------------------------------------------------------------

    def url(self, node: str, path: str) -> str:
        cfg = next(c for c in self.configs if c.node.name == node)
        return f"http://{cfg.gateway.http}{path}"

    @property
    def honest(self) -> list[str]:
        return [c.node.name for c in self.configs if c.node.name != self.scenario.byzantine_node]

    async def get_json(self, node: str, path: str) -> Any:
        assert self.session is not None
        async with self.session.get(self.url(node, path)) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise ScenarioFailed(f"GET {path} on {node}: {resp.status} {body}")
            return body

    async def status(self, node: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.get_json(node, "/v1/status")
        return result

    async def submit(self, index: int, parents: list[str]) -> str | None:
        """Submit one vertex to a live honest gateway (retrying others); None if none took it."""
        assert self.session is not None
        wait = self.scenario.wait_every > 0 and index % self.scenario.wait_every == 0
        body = {
            "payload": base64.b64encode(f"{self.scenario.name}-{index}".encode()).decode(),
            "parents": parents,
        }
        candidates = [n for n in self.honest if n not in self.down | self.partitioned]
        for attempt in range(2 * len(candidates)):
            node = candidates[(index + attempt) % len(candidates)]
            url = self.url(node, "/v1/vertices") + ("?wait=true" if wait else "")
            try:
                async with self.session.post(url, json=body) as resp:
                    reply = await resp.json(content_type=None)
                    if resp.status == 200:
                        self.ledger.accepted[reply["hash"]] = node
                        self.ledger.final.add(reply["hash"])
                        return str(reply["hash"]) if wait else None
                    if resp.status == 202:
                        self.ledger.accepted[reply["hash"]] = node
                        return None
                    if resp.status in (429, 503, 504):
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    if resp.status == 422 and reply["error"]["code"] == "unknown_parent":
                        # The parent is final at another node; this one is still catching up.
                        await asyncio.sleep(0.2 * (attempt + 1))
                        continue
                    raise ScenarioFailed(f"submit {index} to {node}: {resp.status} {reply}")
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.2 * (attempt + 1))
        self.events.append(f"vertex {index}: no gateway accepted it")
        return None

    # -- perturbations ------------------------------------------------------------------

    async def resolve(self, name: str) -> str:
        """A node name, "primary" (asked at fire time) or a label, to a node name."""
        if name == "primary":
            live = next(n for n in self.honest if n not in self.down)
            status = await self.status(live)
            return self.configs[int(status["primary"])].node.name
        return self.labels.get(name, name)

    async def fire(self, step: Step) -> None:
        assert self.supervisor is not None
        if step.settle:
            await self.settle(off_checkpoint=step.off_checkpoint)
        node = await self.resolve(step.node)
        if step.label:
            self.labels[step.label] = node
        if step.action in OPERATOR_ACTIONS:
            self.events.append(f"step {step.action} {node}/{step.service or '*'}")
            if step.action == "backup":
                await self.backup(node)
            elif step.action == "stop_node":
                self.ledger.at_risk |= self.unfinished_at(node)
                self.down.add(node)
                await self.stop_node(node, step.service)
            elif step.action == "restore":
                await self.restore(node)
            elif step.action == "wipe":
                await self.wipe(node)
            else:
                await self.supervisor.release(node, step.service)
                self.down.discard(node)
            return
        if step.action in COPY_ACTIONS:
            assert step.to is not None
            to = await self.resolve(step.to)
            self.events.append(f"step {step.action} {node} {to} x{step.count}")
            for _ in range(step.count):
                tag = f"{step.action} #{len(self.ledger.copies) + 1} ({node}, {to})"
                if step.action == "split_copies":
                    await self.split_copies(tag, node, to)
                else:
                    await self.twin_copies(tag, node, to)
            return
        self.events.append(f"step {step.action} {node}/{step.service or '*'}")
        if step.action == "kill":
            self.down.add(node)
            self.ledger.at_risk |= self.unfinished_at(node)
            self.supervisor.signal(node, signal.SIGKILL, step.service)
            await self.supervisor.wait_exited(node, step.service)
        elif step.action == "restart":
            await self.supervisor.release(node, step.service)
            self.down.discard(node)
        elif step.action == "stop":
            self.down.add(node)
            self.supervisor.signal(node, signal.SIGSTOP, step.service)
        elif step.action == "cont":
            self.supervisor.signal(node, signal.SIGCONT, step.service)
            self.down.discard(node)
        elif step.action in ("partition", "heal"):
            await self.set_partition(node, step.action == "partition")
        elif step.action == "mute":
            await self.set_muted(node, True)
        elif step.action == "unmute":
            await self.unmute(node)

    def unfinished_at(self, node: str) -> set[str]:
        """Vertices given to ``node`` not yet acknowledged final (lost if it goes down)."""
        return {
            h for h, n in self.ledger.accepted.items() if n == node and h not in self.ledger.final
        }

    # -- operator steps: backup, clean stop, restore, start ----------------------------

    def config_of(self, node: str) -> NodeConfig:
        return next(c for c in self.configs if c.node.name == node)

    async def cli(self, *args: str) -> tuple[int, str]:
        """Run ``cretoai-node ARGS`` (this interpreter, this import path); code, output."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node.cli",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def backup(self, node: str) -> None:
        """``cretoai-node backup`` of a running node, through its storage service."""
        output = self.directory / "backups" / f"{node}-{len(self.backups) + 1}"
        output.parent.mkdir(exist_ok=True)
        cfg = self.config_of(node)
        code, out = await self.cli("backup", "--config", str(cfg.source), "--output", str(output))
        if code != 0:
            raise ScenarioFailed(f"cretoai-node backup of {node}: exit {code}: {out}")
        manifest = json.loads((output / BACKUP_MANIFEST).read_text())
        self.backups[node] = Backup(path=output, last_seq=int(manifest["last_seq"]))
        self.events.append(f"backup of {node} at last_seq {manifest['last_seq']}")

    async def stop_node(self, node: str, service: str | None) -> None:
        """SIGTERM the services in reverse start order, each waited for, held afterwards."""
        assert self.supervisor is not None
        children = self.supervisor.children_of(node, service)
        for child in children:
            child.held = True  # an exit is not restarted until start_node
        for name in reversed(registry.NAMES):
            for child in children:
                if child.service != name or child.process is None:
                    continue
                if child.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.wait_for(child.process.wait(), STOP_GRACE_S)
                except TimeoutError:
                    child.process.kill()
                    await child.process.wait()
                    raise ScenarioFailed(
                        f"{child.label} did not stop within {STOP_GRACE_S:.0f}s of SIGTERM"
                    ) from None
                self.events.append(f"{child.label} stopped (exit code {code})")

    async def wipe(self, node: str) -> None:
        """Delete the stopped node's whole data directory (database and signing mark: a
        disk replaced, its key and config kept): it starts again on an empty one."""
        assert self.supervisor is not None
        if any(
            c.process is not None and c.process.returncode is None
            for c in self.supervisor.children_of(node)
        ):
            raise ScenarioFailed(f"wipe {node}: still running")
        data_dir = self.config_of(node).data_dir
        shutil.rmtree(data_dir)
        data_dir.mkdir(mode=0o700)
        self.events.append(f"wiped {data_dir}")

    async def restore(self, node: str) -> None:
        """``cretoai-node restore --force`` of the node's last backup (node stopped)."""
        assert self.supervisor is not None
        backup = self.backups.get(node)
        if backup is None:
            raise ScenarioFailed(f"restore {node}: no backup of it was taken")
        running = [
            c.label
            for c in self.supervisor.children_of(node)
            if c.process is not None and c.process.returncode is None
        ]
        if running:
            raise ScenarioFailed(f"restore {node}: still running: {running}")
        cfg = self.config_of(node)
        code, out = await self.cli(
            "restore", "--config", str(cfg.source), "--from", str(backup.path), "--force"
        )
        if code != 0:
            raise ScenarioFailed(f"cretoai-node restore of {node}: exit {code}: {out}")
        self.restored[node] = Restored(backup=backup, output=out)
        self.events.append(f"restore of {node}: {out.strip()}")

    async def settle(self, *, off_checkpoint: bool) -> None:
        """Wait until nothing accepted is pending; optionally leave the last seq off a
        checkpoint (one more finalized vertex)."""
        await self.wait_all_final()
        if not off_checkpoint:
            return
        interval = self.configs[0].consensus.checkpoint_interval
        if interval < 2:
            raise ScenarioFailed("off_checkpoint: every seq is a checkpoint (interval 1)")
        nodes = [n for n in self.honest if n not in self.down | self.partitioned]
        last = max([int((await self.status(n))["last_executed_seq"]) for n in nodes])
        while last % interval == 0:
            self.extra_vertices += 1
            tag = f"off-checkpoint-{self.extra_vertices}"
            body = {
                "payload": base64.b64encode(f"{self.scenario.name}-{tag}".encode()).decode(),
                "parents": [],
            }
            status, reply = await self.post_vertex(nodes[0], body, wait=True)
            if status != 200:
                raise ScenarioFailed(f"{tag} to {nodes[0]}: {status} {reply}")
            self.ledger.accepted[reply["hash"]] = nodes[0]
            self.ledger.final.add(reply["hash"])
            await self.wait_all_final()
            self.events.append(f"seq {last} is a checkpoint: {tag} finalized at {reply['seq']}")
            last = int(reply["seq"])
        self.events.append(f"settled at seq {last}")

    # -- client-signed copies -----------------------------------------------------------

    def client_vertex(self, tag: str) -> vertex_pb2.Vertex:
        payload = f"{self.scenario.name} {tag}".encode()
        return make_vertex(self.client, payload, [], int(time.time() * 1000))

    async def post_vertex(
        self, node: str, body: dict[str, Any], *, wait: bool
    ) -> tuple[int, dict[str, Any]]:
        """POST one vertex to ``node`` (again while it sheds load or is briefly down)."""
        assert self.session is not None
        url = self.url(node, "/v1/vertices") + ("?wait=true" if wait else "")
        answer: tuple[int, dict[str, Any]] | str = "no answer"
        for attempt in range(8):
            try:
                async with self.session.post(url, json=body) as resp:
                    answer = resp.status, await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                answer = repr(exc)
            if not isinstance(answer, str) and answer[0] not in RETRY_STATUSES:
                return answer
            await asyncio.sleep(0.2 * (attempt + 1))
        raise ScenarioFailed(f"POST /v1/vertices to {node}: still {answer} after 8 attempts")

    def expect_finalized(self, tag: str, node: str, h: str, answer: tuple[int, Any]) -> int:
        """Check a ?wait=true answer is 200 finalized for ``h``, record it; its seq."""
        status, reply = answer
        if status != 200 or reply.get("hash") != h or reply.get("status") != "finalized":
            raise ScenarioFailed(
                f"{tag}: the valid copy to {node} with ?wait=true: expected 200 finalized "
                f"{h[:16]}…, got {status} {reply}"
            )
        self.ledger.accepted[h] = node
        self.ledger.final.add(h)
        self.ledger.copies[h] = tag
        return int(reply["seq"])

    async def split_copies(self, tag: str, bad_node: str, good_node: str) -> None:
        """A corrupted copy to ``bad_node`` (refused), then the valid one to ``good_node``."""
        vertex = self.client_vertex(tag)
        h = vertex_hash(vertex).hex()
        status, reply = await self.post_vertex(
            bad_node, signed_body(vertex, corrupted(vertex.signature)), wait=False
        )
        if status != 422 or reply.get("error", {}).get("code") != "bad_signature":
            raise ScenarioFailed(
                f"{tag}: the corrupted copy to {bad_node}: expected 422 bad_signature, "
                f"got {status} {reply}"
            )
        answer = await self.post_vertex(good_node, signed_body(vertex, vertex.signature), wait=True)
        self.expect_finalized(tag, good_node, h, answer)

    async def twin_copies(self, tag: str, first: str, second: str) -> None:
        """Two valid, differently signed copies of one content to two nodes at once."""
        vertex = self.client_vertex(tag)
        h = vertex_hash(vertex).hex()
        resigned = self.client.sign(canonical_bytes(vertex), context=VERTEX_CONTEXT)
        if resigned == vertex.signature:
            raise ScenarioFailed(f"{tag}: signing twice gave one signature (not randomized)")
        one, other = await asyncio.gather(
            self.post_vertex(first, signed_body(vertex, vertex.signature), wait=True),
            self.post_vertex(second, signed_body(vertex, resigned), wait=True),
        )
        seqs = (
            self.expect_finalized(tag, first, h, one),
            self.expect_finalized(tag, second, h, other),
        )
        if seqs[0] != seqs[1]:
            raise ScenarioFailed(f"{tag}: {first} and {second} answered seqs {seqs}")

    async def set_partition(self, node: str, cut: bool) -> None:
        """Cut (or heal) every link of ``node`` in both directions, via transport faults."""
        from cretoai.channels import service_channel, service_endpoint
        from cretoai.crypto.keys import node_id
        from cretoai.v1 import transport_pb2, transport_pb2_grpc

        ids = {
            c.node.name: node_id(c.validators[c.replica_index].public_key_bytes)
            for c in self.configs
        }
        for cfg in self.configs:
            peers = [p for p in ids if p != cfg.node.name and (cfg.node.name == node or p == node)]
            if not peers:
                continue
            target, tls = service_endpoint(cfg, "transport")
            async with service_channel(target, tls=tls) as channel:
                stub = transport_pb2_grpc.TransportStub(channel)
                for peer in peers:
                    await stub.SetFaults(
                        transport_pb2.SetFaultsRequest(node_id=ids[peer], partitioned=cut),
                        timeout=10,
                    )
        (self.partitioned.add if cut else self.partitioned.discard)(node)
        await self.expect_readiness(node, cut)

    async def set_muted(self, node: str, muted: bool) -> None:
        """Drop everything ``node``'s transport sends (it still hears its peers)."""
        from cretoai.channels import service_channel, service_endpoint
        from cretoai.v1 import transport_pb2, transport_pb2_grpc

        target, tls = service_endpoint(self.config_of(node), "transport")
        async with service_channel(target, tls=tls) as channel:
            stub = transport_pb2_grpc.TransportStub(channel)
            await stub.SetFaults(
                transport_pb2.SetFaultsRequest(drop_rate=1.0 if muted else 0.0), timeout=10
            )

    async def unmute(self, node: str, timeout: float = 30.0) -> None:
        """Once muted ``node`` suspected its primary (its VIEW-CHANGE lost, its requests
        never ordered), let it be heard again: it is alone in a view its peers are not
        in and cannot go back, so its /readyz says ``alone_in_view`` while the others
        stay ready; its relayed requests are finalized by them all the same."""
        assert self.session is not None
        deadline = time.monotonic() + timeout
        while not (await self.status(node))["view_changing"]:
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"muted {node} never left its view: {await self.status(node)}")
            await asyncio.sleep(0.1)
        await self.set_muted(node, False)
        while True:
            async with self.session.get(self.url(node, "/readyz")) as resp:
                reply = await resp.json(content_type=None)
                if (resp.status, reply.get("checks", {}).get("quorum")) == (503, "alone_in_view"):
                    break
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"/readyz of {node} alone in its view: {resp.status} {reply}")
            await asyncio.sleep(0.1)
        self.events.append(f"{node} alone in view {(await self.status(node))['view']}")
        for other in [n for n in self.honest if n != node and n not in self.down]:
            async with self.session.get(self.url(other, "/readyz")) as resp:
                if resp.status != 200:
                    raise ScenarioFailed(f"/readyz of {other}: {await resp.text()}")

    async def expect_readiness(self, node: str, cut: bool, timeout: float = 20.0) -> None:
        """``node``'s /readyz: 503 with ``quorum`` ``cut_off`` once its links are cut
        (it can finalize nothing: a load balancer should send clients elsewhere), 200
        again once healed; the other live nodes stay ready (they still make a quorum)."""
        assert self.session is not None
        others = [n for n in self.honest if n != node and n not in self.down | self.partitioned]
        deadline = time.monotonic() + timeout
        while True:
            async with self.session.get(self.url(node, "/readyz")) as resp:
                reply = await resp.json(content_type=None)
                quorum = reply.get("checks", {}).get("quorum")
                if (resp.status, quorum) == ((503, "cut_off") if cut else (200, "connected")):
                    break
            if time.monotonic() > deadline:
                raise ScenarioFailed(
                    f"/readyz of {node} {'cut off' if cut else 'healed'}: {resp.status} {reply}"
                )
            await asyncio.sleep(0.1)
        for other in others:
            async with self.session.get(self.url(other, "/readyz")) as resp:
                if resp.status != 200:
                    body = await resp.text()
                    raise ScenarioFailed(f"/readyz of {other} while {node} is cut: {body}")

    # -- load, wait, check --------------------------------------------------------------

    async def load(self) -> None:
        steps = sorted(self.scenario.steps, key=lambda s: s.after)
        parents: list[str] = []
        for index in range(self.scenario.vertices):
            while steps and steps[0].after <= index:
                await self.fire(steps.pop(0))
            final_hash = await self.submit(index, parents)
            if final_hash:
                parents = [final_hash]
        for step in steps:
            await self.fire(step)

    def required(self) -> set[str]:
        """Vertices that must end up final: every acknowledged-final one, and every accepted
        one that was given to a node that stayed up (liveness for honest replicas)."""
        return self.ledger.final | (set(self.ledger.accepted) - self.ledger.at_risk)

    async def finalized_log(self, node: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        from_seq = 1
        while True:
            page = await self.get_json(node, f"/v1/finalized?from_seq={from_seq}&limit=100")
            batches = page["batches"]
            if not batches:
                return entries
            entries += batches
            from_seq = int(batches[-1]["seq"]) + 1

    async def wait_all_final(self) -> None:
        deadline = time.monotonic() + self.scenario.timeout_s
        required = self.required()
        nodes = [n for n in self.honest if n not in self.down]
        while True:
            missing: dict[str, int] = {}
            for node in nodes:
                with contextlib.suppress(ScenarioFailed, aiohttp.ClientError, TimeoutError):
                    final = {
                        v["hash"] for b in await self.finalized_log(node) for v in b["vertices"]
                    }
                    missing[node] = len(required - final)
                    continue
                missing[node] = -1
            if all(count == 0 for count in missing.values()):
                return
            if self.scenario.expect_no_evidence:  # fail at once, not at the deadline
                await self.check_no_evidence(nodes, strict=False)
            if time.monotonic() > deadline:
                raise ScenarioFailed(
                    f"not final after {self.scenario.timeout_s:.0f}s (missing per node "
                    f"{missing}); events: {self.events}\n{self.logs_tail()}"
                )
            await asyncio.sleep(0.5)

    async def check(self) -> dict[str, Any]:
        """Agreement, no loss, no duplicates, valid certificates. Returns a summary."""
        nodes = [n for n in self.honest if n not in self.down]
        logs = {node: await self.finalized_log(node) for node in nodes}
        reference = logs[nodes[0]]
        shortest = min(len(log) for log in logs.values())
        for node, log in logs.items():
            for a, b in zip(reference[:shortest], log[:shortest], strict=True):
                if a["seq"] != b["seq"] or batch_outcome(a) != batch_outcome(b):
                    raise ScenarioFailed(
                        f"agreement violated at seq {a['seq']}: {nodes[0]} has "
                        f"{batch_outcome(a)}, {node} has {batch_outcome(b)}"
                    )
        # A content may be ordered more than once (differently signed copies): every
        # copy after the first is rejected at execution, so it is finalized once.
        finalized: Counter[str] = Counter()
        for batch in reference:
            finalized.update(v["hash"] for v in batch["vertices"])
            finalized.subtract(batch["rejected"])
        twice = sorted(h for h, times in finalized.items() if times > 1)
        if twice:
            raise ScenarioFailed(f"{len(twice)} vertices were finalized twice: {twice[:3]}")
        hashes = [h for h, times in finalized.items() if times == 1]
        self.check_signatures(reference, set(hashes))
        lost = self.required() - set(hashes)
        if lost:
            raise ScenarioFailed(
                f"{len(lost)} acknowledged vertices are not final: {sorted(lost)[:3]}"
            )
        keys = self.configs[0].validator_public_keys
        for batch in reference:
            try:
                cert = verify_certificate(certificate_from_json(batch["certificate"]), keys)
            except InvalidCertificate as exc:
                raise ScenarioFailed(f"the certificate of seq {batch['seq']}: {exc}") from None
            if cert.seq != int(batch["seq"]) or cert.digest.hex() != batch["batch_digest"]:
                raise ScenarioFailed(f"the certificate of seq {batch['seq']} is for another batch")
        await self.check_inclusion(nodes[0], reference)
        await self.check_byzantine_detected(nodes)
        await self.check_copies(nodes)
        await self.check_reputation(nodes)
        await self.check_no_evidence(nodes)
        await self.check_signing_floor(nodes)
        await self.check_pool_bounded(nodes)
        await self.check_verifications(nodes, len(hashes))
        await self.check_recent(nodes)
        await self.check_logs(nodes)
        return {
            "batches": len(reference),
            "vertices": len(hashes),
            "accepted": len(self.ledger.accepted),
            "acknowledged_final": len(self.ledger.final),
            "copies": len(self.ledger.copies),
            "rejected": sum(len(batch["rejected"]) for batch in reference),
            "restored": {node: r.backup.last_seq for node, r in self.restored.items()},
            "views": {node: (await self.status(node))["view"] for node in nodes},
            **({"pool": self.pool_figures} if self.pool_figures else {}),
            **({"verifications": self.verification_figures} if self.verification_figures else {}),
            "invalid_copies_ordered": self.invalid_copies_ordered,
            "recent_decided": self.recent_decided,
            "events": self.events,
        }

    def check_signatures(self, log: list[dict[str, Any]], finalized: set[str]) -> None:
        """Validity: every finalized content has a copy in the log whose signature verifies
        (what the nodes took as valid, checked here from the bytes alone)."""
        backend = get_backend("auto")
        valid: set[str] = set()
        bad = 0
        for batch in log:
            rejected = set(batch["rejected"])
            for v in batch["vertices"]:
                h = v["hash"]
                if (h in finalized and h not in valid) or h in rejected:
                    if verify_vertex(vertex_from_json(v), backend):
                        valid.add(h)
                    else:
                        bad += 1
        self.invalid_copies_ordered = bad
        unsigned = finalized - valid
        if unsigned:
            raise ScenarioFailed(
                f"{len(unsigned)} finalized vertices have no validly signed copy: "
                f"{sorted(unsigned)[:3]}"
            )
        if self.scenario.expect_invalid_rejected and not bad:
            raise ScenarioFailed("expected badly signed copies ordered (and rejected)")

    async def check_verifications(self, nodes: list[str], vertices: int) -> None:
        """Vouched verification: the cluster verified fewer vertex signatures than one per
        node per vertex, and some node took vouched copies as valid unverified."""
        if not self.scenario.expect_vouched:
            return
        verified = adopted = 0.0
        for node in nodes:
            samples = await self.metrics(node)
            verified += sum(
                value
                for name, value in samples.items()
                if name.startswith("cretoai_consensus_signature_verifications_total{")
                and 'kind="vertex"' in name
            )
            adopted += samples.get("cretoai_consensus_vertex_verifications_vouched_total", 0.0)
        self.verification_figures = {"verified": verified, "vouched": adopted}
        # f+1 per vertex (its entry node, the primary or its co-verifier), and a few more
        # where a claim came after the execution that needed it
        most = 1.2 * ((len(self.configs) - 1) // 3 + 1)
        if adopted <= 0 or verified > most * vertices:
            raise ScenarioFailed(
                f"expected vouched copies and at most {most:.1f} verifications per vertex "
                f"in the cluster ({vertices} vertices): {self.verification_figures}"
            )

    async def check_inclusion(self, node: str, log: list[dict[str, Any]]) -> None:
        """Every vertex acknowledged final, as a client checks it without trusting the
        node: its record names a seq, and the batch at that seq (``/v1/finalized``) holds
        it under a certificate of the validator set (``verify_inclusion``); the batch
        of another seq does not, though its certificate is as genuine (an audit,
        2026-12-04: a record's certificate alone proves only that some batch at its seq
        was final)."""
        keys = self.configs[0].validator_public_keys
        batches = {int(b["seq"]): batch_from_json(b) for b in log}
        for h in sorted(self.ledger.final):
            record = await self.get_json(node, f"/v1/vertices/{h}")
            vertex, seq = vertex_from_json(record), int(record["seq"])
            try:
                verify_inclusion(vertex, batches[seq], keys)
            except InvalidCertificate as exc:
                raise ScenarioFailed(f"vertex {h[:16]} in the batch at seq {seq}: {exc}") from None
            other = next((s for s in batches if s != seq), None)
            if other is None:
                continue
            try:
                verify_inclusion(vertex, batches[other], keys)
            except InvalidCertificate:
                continue
            raise ScenarioFailed(f"vertex {h[:16]} passed for the batch at seq {other} too")

    async def check_copies(self, nodes: list[str]) -> None:
        """Every vertex of a copies step is finalized at one seq on every node."""
        for h, tag in self.ledger.copies.items():
            records = {node: await self.get_json(node, f"/v1/vertices/{h}") for node in nodes}
            outcomes = {
                node: (r["status"], r["seq"], r["reject_reason"]) for node, r in records.items()
            }
            if len(set(outcomes.values())) != 1 or outcomes[nodes[0]][0] != "finalized":
                raise ScenarioFailed(
                    f"{tag}: vertex {h[:16]}… is not finalized at one seq on every node: {outcomes}"
                )

    async def check_logs(self, nodes: list[str]) -> None:
        """Every log line of every service names its node and service; each node's
        consensus log says how it reached its current view, with the view and a seq."""
        for cfg in self.configs:
            for path in sorted((cfg.data_dir.parent / "logs").glob("*.log")):
                tag = f"node={cfg.node.name} service={path.stem} "
                for line in path.read_text(errors="replace").splitlines():
                    if line.startswith("ts=") and tag not in line:
                        raise ScenarioFailed(f"{path}: a line without {tag!r}: {line}")
        for node in nodes:
            view = int((await self.status(node))["view"])
            if view == 0:
                continue
            log_file = self.config_of(node).data_dir.parent / "logs" / "consensus.log"
            how = [
                line
                for line in log_file.read_text(errors="replace").splitlines()
                if any(f'msg="{m}"' in line for m in VIEW_MESSAGES)
                and f" view={view} " in f"{line} "
                and " seq=" in line
            ]
            if not how:
                raise ScenarioFailed(
                    f"{node} is in view {view}, but {log_file} has no line of "
                    f"{VIEW_MESSAGES} with view={view} and a seq"
                )
            self.events.append(f"{node}: {how[-1]}")

    async def check_recent(self, nodes: list[str]) -> None:
        """Execution's statuses from what each process finalized lately never differed
        from storage's (the logs: they outlive restarts), and decided batches here."""
        for cfg in self.configs:
            log_file = cfg.data_dir.parent / "logs" / "consensus.log"
            if not log_file.exists():
                continue
            for line in log_file.read_text(errors="replace").splitlines():
                if RECENT_MISMATCH in line:
                    raise ScenarioFailed(f"{log_file}: {line}")
        decided = 0.0
        for node in nodes:
            samples = await self.metrics(node)
            decided += samples.get('cretoai_consensus_execution_lookups_total{source="recent"}', 0)
            if samples.get("cretoai_consensus_recent_mismatches_total", 0):
                raise ScenarioFailed(f"{node}: cretoai_consensus_recent_mismatches_total > 0")
        self.recent_decided = int(decided)

    async def check_reputation(self, nodes: list[str]) -> None:
        """No honest node charged or banned an honest peer."""
        if not self.scenario.expect_reputation_intact:
            return
        start = starting_reputation()
        honest = set(self.honest)
        for node in nodes:
            peers = {p["name"]: p for p in (await self.status(node))["peers"]}
            if not honest - {node} <= set(peers):
                raise ScenarioFailed(f"{node}'s status lists peers {sorted(peers)} only")
            charged = {
                name: {"reputation": p["reputation"], "banned": p["banned"]}
                for name, p in peers.items()
                if name in honest and (p["reputation"] != start or p["banned"])
            }
            if charged:
                raise ScenarioFailed(
                    f"{node} charged honest peers (starting reputation {start}): {charged}; "
                    f"events: {self.events}"
                )

    async def metrics(self, node: str) -> dict[str, float]:
        """The consensus service's Prometheus samples (name with labels -> value)."""
        assert self.session is not None
        url = f"http://{self.config_of(node).consensus.metrics}/metrics"
        async with self.session.get(url) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise ScenarioFailed(f"GET {url}: {resp.status}")
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    async def check_pool_bounded(self, nodes: list[str]) -> None:
        """Every honest node dropped forwarded requests for a peer's share of its pool (the
        flooding one's: honest nodes forward little here), and holds at most the bound."""
        if not self.scenario.expect_pool_bounded:
            return
        bound = self.configs[0].consensus.pool_max_bytes
        found = {}
        for node in nodes:
            samples = await self.metrics(node)
            dropped = samples.get("cretoai_consensus_peer_requests_dropped_total", 0.0)
            held = samples.get("cretoai_consensus_pool_bytes", 0.0)
            found[node] = {"dropped": dropped, "pool_bytes": held}
        self.pool_figures = found
        if any(f["dropped"] <= 0 or f["pool_bytes"] > bound for f in found.values()):
            raise ScenarioFailed(
                f"expected every honest node to drop forwards beyond a peer's share and to "
                f"hold at most {bound} pool bytes: {found}; events: {self.events}"
            )

    async def check_no_evidence(self, nodes: list[str], *, strict: bool = True) -> None:
        """No node holds or counted equivocation evidence, and none bans anyone (not
        ``strict``: a node that does not answer right now is skipped)."""
        if not self.scenario.expect_no_evidence:
            return
        found = {}
        for node in nodes:
            try:
                status = await self.status(node)
                samples = await self.metrics(node)
            except (ScenarioFailed, aiohttp.ClientError, TimeoutError):
                if strict:
                    raise
                continue
            counted = samples.get("cretoai_consensus_evidence_total", 0.0)
            banned = sorted(p["name"] for p in status["peers"] if p["banned"])
            if status["evidence"] or counted or banned or status["banned"]:
                found[node] = {
                    "evidence": status["evidence"],
                    "evidence_total": counted,
                    "bans": banned or status["banned"],
                }
        if found:
            raise ScenarioFailed(
                f"equivocation evidence or bans: {found}; events: {self.events}\n"
                + self.logs_tail()
            )

    async def check_signing_floor(self, nodes: list[str]) -> None:
        """Every restored node: told, logged, floored above its backup, trusted, caught up."""
        s = self.scenario
        if not (s.expect_signing_floor or s.expect_floor_refusals):
            return
        if not self.restored:
            raise ScenarioFailed("[expect] signing_floor, but no node was restored")
        for node, restored in self.restored.items():
            cfg = self.config_of(node)
            mark = str(cfg.signing_mark_path)
            if mark not in restored.output or "state transfer" not in restored.output:
                raise ScenarioFailed(
                    f"restore of {node} does not explain the signing mark {mark} and state "
                    f"transfer: {restored.output}"
                )
            log_file = cfg.data_dir.parent / "logs" / "consensus.log"
            warnings = [
                line
                for line in log_file.read_text(errors="replace").splitlines()
                if FLOOR_WARNING in line
            ]
            if not warnings:
                raise ScenarioFailed(f"{log_file} has no line with {FLOOR_WARNING!r}")
            samples = await self.metrics(node)
            floor = samples.get("cretoai_consensus_signing_floor_seq", 0.0)
            refusals = samples.get("cretoai_consensus_signing_floor_refusals_total", 0.0)
            self.events.append(
                f"{node}: signing floor seq {floor:.0f} (backup last_seq "
                f"{restored.backup.last_seq}), refusals {refusals:.0f}; {warnings[-1]}"
            )
            if floor <= restored.backup.last_seq:
                raise ScenarioFailed(
                    f"{node}: cretoai_consensus_signing_floor_seq {floor:.0f} is not above the "
                    f"backup's last_seq {restored.backup.last_seq}"
                )
            if s.expect_floor_refusals and refusals < 1:
                raise ScenarioFailed(
                    f"{node}: cretoai_consensus_signing_floor_refusals_total is {refusals:.0f}; "
                    f"events: {self.events}"
                )
            banning = [
                other
                for other in nodes
                if any(
                    p["name"] == node and p["banned"] for p in (await self.status(other))["peers"]
                )
            ]
            if banning:
                raise ScenarioFailed(f"the restored {node} is banned by {banning}")
            await self.wait_caught_up(node, nodes)

    async def wait_caught_up(self, node: str, nodes: list[str]) -> None:
        """``node`` reaches the highest last executed seq of ``nodes`` (bounded)."""
        deadline = time.monotonic() + 30
        while True:
            seqs = {n: int((await self.status(n))["last_executed_seq"]) for n in nodes}
            if seqs[node] >= max(seqs.values()):
                return
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"the restored {node} did not catch up: {seqs}")
            await asyncio.sleep(0.5)

    async def check_byzantine_detected(self, nodes: list[str]) -> None:
        """The Byzantine node is banned (and its equivocation proven) on every honest node."""
        s = self.scenario
        if not s.byzantine_node or not (s.expect_banned or s.expect_evidence):
            return
        deadline = time.monotonic() + 30
        while True:
            statuses = {node: await self.status(node) for node in nodes}
            unbanned = [
                node
                for node, st in statuses.items()
                if s.expect_banned
                and not any(p["name"] == s.byzantine_node and p["banned"] for p in st["peers"])
            ]
            no_evidence = [
                node for node, st in statuses.items() if s.expect_evidence and not st["evidence"]
            ]
            if not unbanned and not no_evidence:
                return
            if time.monotonic() > deadline:
                raise ScenarioFailed(
                    f"{s.byzantine_node} ({s.byzantine_mode}) not banned by {unbanned}; "
                    f"no evidence at {no_evidence}; events: {self.events}"
                )
            await asyncio.sleep(0.5)


async def run_scenario(path: Path, directory: Path, base_port: int) -> dict[str, Any]:
    scenario = Scenario.load(path)
    async with ClusterRun(scenario, directory, base_port) as run:
        await run.load()
        await run.wait_all_final()
        return await run.check()
