"""bench.decode_costs: the decoding it measures gives the hashes it replaced."""

from __future__ import annotations

import json
from pathlib import Path

from bench.decode_costs import before, envelope, main, now


def test_the_decoding_measured_now_gives_the_same_hashes_as_before() -> None:
    payload = envelope(6)
    hashes = now(payload)
    assert hashes == before(payload)
    assert len(hashes) == 12 and len(set(hashes)) == 12


def test_a_run_writes_its_medians_and_their_ratios(tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    assert main(["--bodies", "4", "--repeats", "2", "--loops", "1", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    medians, ratios = result["cpu_us_per_body_median"], result["ratios"]
    assert set(medians) == {"before", "now", "hash_floor"}
    assert all(v > 0 for v in medians.values())
    assert 0 < ratios["now_over_before"] < 10 and 0 < ratios["now_over_hash_floor"] < 10
    assert len(result["cpu_us_per_body_samples"]["now"]) == 2
