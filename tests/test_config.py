"""Node configuration: loading, validation errors that name file and field, env overrides."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cretoai.config import ConfigError, load_config, parse_config
from node.clusterinit import ClusterLayout
from tests.conftest import cli


@pytest.fixture
def node_config(cluster_factory: Any) -> Path:
    layout: ClusterLayout = cluster_factory(4)
    return layout.nodes[1].config


def _rewrite(path: Path, mutate: Any) -> None:
    data = tomllib.loads(path.read_text())
    mutate(data)
    path.write_text(tomli_w.dumps(data))


def test_generated_config_loads(node_config: Path) -> None:
    cfg = load_config(node_config, environ={})
    assert cfg.node.name == "node2"
    assert cfg.replica_index == 1
    assert len(cfg.validators) == 4
    assert cfg.key_path == node_config.parent / "node.key"
    assert cfg.storage_path == node_config.parent / "data" / "db"
    assert cfg.quic_listen == cfg.validators[1].address
    assert cfg.fault_injection.enabled is False


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["consensus"].update(batch_max_count="many"), "consensus.batch_max_count"),
        (lambda d: d["consensus"].update(batch_max_count=True), "consensus.batch_max_count"),
        (lambda d: d["consensus"].update(batch_max_count=0), "consensus.batch_max_count"),
        (lambda d: d["consensus"].update(bogus=1), "'bogus'"),
        (lambda d: d.update(extra={"a": 1}), "unknown section [extra]"),
        (lambda d: d["node"].pop("key"), "node.key: missing"),
        (lambda d: d.pop("node"), "missing section [node]"),
        (lambda d: d["node"].update(name="node9"), "not in [[validators]]"),
        (lambda d: d["validators"][0].update(public_key="zz"), "validators[0].public_key"),
        (lambda d: d["validators"][2].update(public_key="ab" * 10), "validators[2].public_key"),
        (lambda d: d["validators"][1].update(address="nowhere"), "validators[1].address"),
        (lambda d: d["storage"].update(listen="127.0.0.1:99999"), "storage.listen"),
        (lambda d: d["telemetry"].update(sampling_ratio=2), "telemetry.sampling_ratio"),
        (lambda d: d["telemetry"].update(log_format="xml"), "telemetry.log_format"),
        (lambda d: d["crypto"].update(backend="rsa"), "crypto.backend"),
        (lambda d: d["consensus"].update(watermark_window=8), "consensus.watermark_window"),
        (
            lambda d: d["gateway"].update(max_submissions_in_progress=0),
            "gateway.max_submissions_in_progress",
        ),
        (lambda d: d["gateway"].update(client_vertices_per_s=0), "client_vertices_per_s"),
        (
            lambda d: d["gateway"].update(client_vertices_per_s=float("nan")),
            "gateway.client_vertices_per_s: must be a finite number",
        ),
        (
            lambda d: d["gateway"].update(client_burst_vertices=255),  # < the largest batch
            "gateway.client_burst_vertices: 255 is less than the largest batch",
        ),
        (
            lambda d: d["consensus"].update(admission_max_wait_ms=4000),  # = request timeout
            "consensus.admission_max_wait_ms",
        ),
        (lambda d: d["consensus"].update(progress_timeout_ms=0), "consensus.progress_timeout_ms"),
        (
            lambda d: d["consensus"].update(progress_timeout_ms=4001),  # > request timeout
            "consensus.progress_timeout_ms",
        ),
        (lambda d: d["consensus"].update(status_interval_ms=0), "consensus.status_interval_ms"),
        # timeouts too short for peers to answer: a node alone in a view of its own
        (
            lambda d: d["consensus"].update(progress_timeout_ms=30, status_interval_ms=10),
            "consensus.progress_timeout_ms: must be at least 100",
        ),
        (
            lambda d: d["consensus"].update(view_change_timeout_ms=60),
            "consensus.view_change_timeout_ms: must be at least 100",
        ),
        (
            lambda d: d["consensus"].update(reputation_threshold=0),
            "consensus.reputation_threshold: must be negative",
        ),
        (
            lambda d: d["consensus"].update(status_interval_ms=1500),  # = progress timeout
            "consensus.status_interval_ms",
        ),
        (
            lambda d: d["consensus"].update(status_quiet_intervals=0),
            "consensus.status_quiet_intervals",
        ),
        (lambda d: d["consensus"].update(pool_max_bytes=0), "consensus.pool_max_bytes"),
        (
            lambda d: d["gateway"].update(max_request_bytes_in_progress=0),
            "gateway.max_request_bytes_in_progress",
        ),
        (
            lambda d: d["gateway"].update(grpc_max_concurrent_rpcs=0),
            "gateway.grpc_max_concurrent_rpcs",
        ),
        (
            lambda d: d["gateway"].update(grpc_max_concurrent_rpcs_per_client=0),
            "gateway.grpc_max_concurrent_rpcs_per_client: must be positive",
        ),
        (lambda d: d["gateway"].update(max_streams=0), "gateway.max_streams"),
        (
            lambda d: d["gateway"].update(max_streams_per_client=0),
            "gateway.max_streams_per_client",
        ),
        (
            lambda d: d["gateway"].update(max_answer_bytes_in_progress=0),
            "gateway.max_answer_bytes_in_progress",
        ),
        (lambda d: d["gateway"].update(max_connections=0), "gateway.max_connections"),
        (
            lambda d: d["gateway"].update(max_connections_per_client=-1),
            "gateway.max_connections_per_client",
        ),
        (lambda d: d["gateway"].update(idle_timeout_ms=0), "gateway.idle_timeout_ms"),
        (lambda d: d["gateway"].update(body_timeout_ms=0), "gateway.body_timeout_ms"),
        (
            lambda d: d["gateway"].update(allowed_origins=["evil.example"]),
            "gateway.allowed_origins: 'evil.example' is not an origin",
        ),
        (
            lambda d: d["gateway"].update(allowed_origins="https://a.example"),
            "gateway.allowed_origins: expected an array of strings",
        ),
        (
            lambda d: d["consensus"].update(pool_max_bytes=1_048_575),  # < batch_max_bytes
            "consensus.pool_max_bytes",
        ),
        (
            # its PRE-PREPARE would not fit a transport frame (4 MiB by default)
            lambda d: d["consensus"].update(batch_max_bytes=4 * 1024 * 1024),
            "consensus.batch_max_bytes: at most",
        ),
        (
            lambda d: (
                d["transport"].update(max_frame_bytes=64 * 1024 * 1024),
                d["consensus"].update(
                    batch_max_bytes=9 * 1024 * 1024, pool_max_bytes=64 * 1024 * 1024
                ),
            ),
            "consensus.batch_max_bytes: at most",
        ),
        # the signing mark (<data_dir>/consensus/...) inside the database: a restore would
        # move it aside with the old database, and the node could sign twice
        (lambda d: d["storage"].update(path="data"), "holds the consensus signing mark"),
        (lambda d: d["storage"].update(path="."), "storage.path"),
        (lambda d: d.update(validators=[]), "[[validators]] is empty"),
        # a NEW-VIEW of 256 prepared certificates x q would not fit a 4-MiB frame
        (
            lambda d: d["consensus"].update(watermark_window=256),
            "consensus.watermark_window: 256 needs NEW-VIEWs of up to",
        ),
        (lambda d: d["consensus"].update(watermark_window=-1), "consensus.watermark_window"),
        # RocksDB's memory: below the floors a node flushes nearly empty memtables or cannot
        # hold its tables' index tops; a huge value is a typo (a unit mistaken)
        (lambda d: d["storage"].update(memtables_mb=47), "storage.memtables_mb: must be within"),
        (lambda d: d["storage"].update(block_cache_mb=3), "storage.block_cache_mb: must be"),
        (lambda d: d["storage"].update(block_cache_mb=32 << 20), "storage.block_cache_mb"),
    ],
)
def test_bad_field_is_named_with_file(node_config: Path, mutate: Any, expected: str) -> None:
    _rewrite(node_config, mutate)
    with pytest.raises(ConfigError) as err:
        load_config(node_config, environ={})
    message = str(err.value)
    assert expected in message
    assert str(node_config) in message


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\nname = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML") as err:
        load_config(broken, environ={})
    assert str(broken) in str(err.value)


def test_env_overrides(node_config: Path) -> None:
    cfg = load_config(
        node_config,
        environ={
            "CRETOAI_CONSENSUS_BATCH_MAX_COUNT": "512",
            "CRETOAI_TELEMETRY_OTLP_ENDPOINT": "http://127.0.0.1:4317",
            "CRETOAI_FAULT_INJECTION_ENABLED": "true",
            "CRETOAI_VENV": "/not/a/setting",  # not a section: ignored
        },
    )
    assert cfg.consensus.batch_max_count == 512
    assert cfg.telemetry.otlp_endpoint == "http://127.0.0.1:4317"
    assert cfg.fault_injection.enabled is True


def test_log_format_default_env_override_and_one_line_error(node_config: Path) -> None:
    assert load_config(node_config, environ={}).telemetry.log_format == "logfmt"
    cfg = load_config(node_config, environ={"CRETOAI_TELEMETRY_LOG_FORMAT": "json"})
    assert cfg.telemetry.log_format == "json"
    with pytest.raises(ConfigError) as err:
        load_config(node_config, environ={"CRETOAI_TELEMETRY_LOG_FORMAT": "yaml"})
    message = str(err.value)
    assert "telemetry.log_format: expected logfmt or json, got 'yaml'" in message
    assert "\n" not in message


def test_env_override_typos_and_types_are_errors(node_config: Path) -> None:
    with pytest.raises(ConfigError, match="CRETOAI_CONSENSUS_BATCH_MAX"):
        load_config(node_config, environ={"CRETOAI_CONSENSUS_BATCH_MAX": "5"})
    with pytest.raises(ConfigError, match=r"consensus\.batch_max_count"):
        load_config(node_config, environ={"CRETOAI_CONSENSUS_BATCH_MAX_COUNT": "lots"})


def test_parse_config_minimal(node_config: Path) -> None:
    data = tomllib.loads(node_config.read_text())
    minimal = {"node": {"name": "node1", "key": "k"}, "validators": data["validators"]}
    cfg = parse_config(minimal, Path("/etc/cretoai/node.toml"))
    assert cfg.consensus.checkpoint_interval > 0
    assert cfg.key_path == Path("/etc/cretoai/k")


def test_cli_reports_config_error_without_traceback(node_config: Path) -> None:
    _rewrite(node_config, lambda d: d["consensus"].update(view_change_timeout_ms="soon"))
    proc = subprocess.run(
        cli("health", "--config", str(node_config)), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "consensus.view_change_timeout_ms" in proc.stderr
    assert str(node_config) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_replica_parameters_derive_from_the_node_config(node_config: Path) -> None:
    from services.consensus.service import FRAME_MARGIN_BYTES, core_config

    _rewrite(
        node_config,
        lambda d: d["consensus"].update(tick_ms=10, request_timeout_ms=1500, batch_max_bytes=65536),
    )
    core = core_config(load_config(node_config, environ={}))
    assert core.request_timeout == 150
    assert core.progress_timeout == 150  # the default 1.5 s (at most the request timeout)
    assert core.admission_max_wait == 38  # 0: a quarter of the request timeout, 375 ms
    assert core.transfer_max_bytes == 2 * 65536
    assert core.pool_max_bytes == 64 * 1024 * 1024  # the default: a peer's share 16 MiB
    assert core.pool_per_peer_bytes == 16 * 1024 * 1024
    assert (core.status_interval, core.status_quiet_intervals) == (20, 5)  # 200 ms, defaults
    _rewrite(
        node_config,
        lambda d: (
            d["consensus"].update(
                admission_max_wait_ms=300,
                progress_timeout_ms=995,
                batch_max_bytes=1_048_576,
                batch_max_count=64,  # a window of NEW-VIEWs that fit the smaller frame
                status_interval_ms=95,
                status_quiet_intervals=1,
            ),
            d["transport"].update(max_frame_bytes=1_048_576 + FRAME_MARGIN_BYTES),
        ),
    )
    core = core_config(load_config(node_config, environ={}))
    assert core.admission_max_wait == 30
    assert core.progress_timeout == 100  # 995 ms in ticks of 10 ms, rounded up
    assert (core.status_interval, core.status_quiet_intervals) == (10, 1)
    assert core.transfer_max_bytes == 1_048_576  # bounded by the transport's frame limit


def test_every_node_of_a_cluster_has_the_same_cluster_parameters(cluster_factory: Any) -> None:
    """What the transports compare (docs/config.md, "Cluster parameters"): the same on
    every node that cluster init wrote, whatever is local to a node (its name, ports,
    timeouts, data), and different as soon as one of them or the validators' order is."""
    layout: ClusterLayout = cluster_factory(4)
    paths = [n.config for n in layout.nodes]
    parameters = {load_config(p, environ={}).cluster_parameters for p in paths}
    assert len(parameters) == 1
    (reference,) = parameters
    assert [name for name, _ in reference] == [
        "validators",
        "consensus.batch_max_count",
        "consensus.batch_max_bytes",
        "consensus.checkpoint_interval",
        "consensus.watermark_window",
        "transport.max_frame_bytes",
    ]
    _rewrite(
        paths[0],
        lambda d: (
            d["consensus"].update(progress_timeout_ms=900, verify_threads=1, pool_max=100),
            d["transport"].update(keepalive_ms=1000, send_queue_max=10),
            d["validators"][1].update(address="127.0.0.1:1", name="renamed"),
        ),
    )
    assert load_config(paths[0], environ={}).cluster_parameters == reference

    def differing(mutate: Any) -> set[str]:
        _rewrite(paths[1], mutate)
        try:
            changed = load_config(paths[1], environ={}).cluster_parameters
        finally:
            _rewrite(paths[1], lambda d: d.update(original))
        return {name for (name, a), (_, b) in zip(reference, changed, strict=True) if a != b}

    original = tomllib.loads(paths[1].read_text())
    assert differing(lambda d: d["validators"].reverse()) == {"validators"}
    assert differing(lambda d: d["consensus"].update(checkpoint_interval=8)) == {
        "consensus.checkpoint_interval"
    }
    assert differing(lambda d: d["consensus"].update(batch_max_bytes=65536)) == {
        "consensus.batch_max_bytes"
    }
    assert differing(lambda d: d["consensus"].update(watermark_window=32)) == {
        "consensus.watermark_window"
    }
    assert differing(lambda d: d["transport"].update(max_frame_bytes=8 * 1024 * 1024)) >= {
        "transport.max_frame_bytes"
    }


def test_the_transports_inbound_bytes_bound_holds_a_frame(node_config: Path) -> None:
    from services.transport.settings import settings_from_config

    assert settings_from_config(load_config(node_config, environ={})).recv_queue_max_bytes == (
        32 * 1024 * 1024
    )
    _rewrite(node_config, lambda d: d["transport"].update(recv_queue_max_bytes=1024))
    with pytest.raises(ConfigError, match=r"transport\.recv_queue_max_bytes"):
        settings_from_config(load_config(node_config, environ={}))


def test_the_watermark_window_fits_a_new_view_in_a_frame(
    cluster_factory: Any,
) -> None:
    """By default the window is the largest multiple of checkpoint_interval whose
    worst-case NEW-VIEW fits a transport frame: a Byzantine primary could otherwise make
    every honest VIEW-CHANGE too large to send, and no view change would complete."""
    from cretoai.config import new_view_bytes_bound

    four = load_config(cluster_factory(4).nodes[0].config, environ={})
    seven = load_config(cluster_factory(7).nodes[0].config, environ={})
    assert (four.watermark_window, seven.watermark_window) == (48, 16)
    for cfg in (four, seven):
        k = cfg.consensus.checkpoint_interval
        fits = new_view_bytes_bound(len(cfg.validators), cfg.watermark_window, 256)
        larger = new_view_bytes_bound(len(cfg.validators), cfg.watermark_window + k, 256)
        assert fits <= cfg.transport.max_frame_bytes < larger
    # at 10 validators not even one checkpoint interval fits a 4-MiB frame: refused, with
    # the size a frame would need, never a window whose view changes cannot be sent
    with pytest.raises(ConfigError, match=r"watermark_window: 16 needs NEW-VIEWs of up to \d+"):
        cluster_factory(10)
