"""Another local user cannot plant, swap or redirect the files a node trusts: keys, TLS
material, configs and the signing mark (cretoai/files.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cretoai.config import ConfigError, load_config
from cretoai.crypto import KeyFileError, load_private_key
from cretoai.files import write_atomically
from node.clusterinit import ClusterLayout, init_cluster
from services.consensus.core.durable import SigningMark
from services.consensus.mark import MarkFile, MarkFileError

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")


def _init(directory: Path) -> ClusterLayout:
    return init_cluster(directory, 1, base_port=27400, http_port=28400)


def test_init_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "cluster"
    (shared / "node1" / "tls").mkdir(parents=True)
    (shared / "node1" / "tls").chmod(0o777)  # anyone could swap the CA and keys written here
    with pytest.raises(ConfigError, match=r"node1/tls is writable by group or others"):
        _init(shared)
    assert list((shared / "node1" / "tls").iterdir()) == []  # nothing written
    (shared / "node1" / "tls").chmod(0o700)
    _init(shared)


@as_root
def test_init_refuses_a_directory_another_user_owns(tmp_path: Path) -> None:
    planted = tmp_path / "cluster"
    (planted / "node1").mkdir(parents=True)
    os.chown(planted / "node1", NOBODY, NOBODY)
    with pytest.raises(ConfigError, match=r"node1 belongs to uid 65534"):
        _init(planted)


@as_root
def test_keys_another_user_owns_are_refused(
    cluster_factory: Callable[..., ClusterLayout],
) -> None:
    layout = cluster_factory(1)
    cfg = load_config(layout.nodes[0].config)
    tls_key = layout.nodes[0].directory / "tls" / "node.key"
    os.chown(tls_key, NOBODY, NOBODY)  # still 0600: what a swapped-in file looks like
    with pytest.raises(ConfigError, match=r"tls/node.key belongs to uid 65534"):
        _ = cfg.internal_tls
    os.chown(cfg.key_path, NOBODY, NOBODY)
    with pytest.raises(KeyFileError, match=r"private key belongs to uid 65534"):
        load_private_key(cfg.key_path)


def test_writes_never_follow_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    directory = tmp_path / "cluster"
    directory.mkdir()
    for name in ("cluster.json.tmp", "node.toml.tmp"):  # the names it once wrote through
        (directory / name).symlink_to(victim)
    (directory / "node1").mkdir()
    (directory / "node1" / "submitter.pub").symlink_to(victim)  # rewritten every time
    layout = _init(directory)
    assert victim.read_text() == "precious\n"
    assert not (layout.nodes[0].directory / "submitter.pub").is_symlink()  # replaced
    target = tmp_path / "config"
    write_atomically(target, b"x", 0o600)
    assert target.read_bytes() == b"x" and target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_signing_mark_never_follows_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n" * 100)
    directory = tmp_path / "data" / "consensus"
    directory.mkdir(parents=True, mode=0o700)
    (directory / "signing-mark.json").symlink_to(victim)
    mark = MarkFile(directory / "signing-mark.json")
    try:
        mark.acquire()
        with pytest.raises(MarkFileError, match="cannot write the signing mark"):
            mark.store(SigningMark(0, 1))
    finally:
        mark.close()
    assert victim.read_text() == "precious\n" * 100


def test_the_signing_mark_refuses_a_directory_others_can_write(tmp_path: Path) -> None:
    directory = tmp_path / "consensus"
    directory.mkdir(mode=0o700)
    directory.chmod(0o777)
    with pytest.raises(MarkFileError, match="writable by group or others"):
        MarkFile(directory / "signing-mark.json").acquire()
