"""Vouched verification (services/consensus/vouches.py, verify.py) with real ML-DSA-87:
a copy is taken as valid unverified only when f+1 distinct members vouched for that
exact signed copy; fewer claims, or claims on another copy of the same content, and
it is verified here as before."""

from __future__ import annotations

import os

import pytest

from cretoai.v1 import vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, vertex_hash
from services.consensus.verify import VERTEX_BAD, VERTEX_OK, Verifier
from services.consensus.vouches import (
    MAX_VOUCHED,
    VOUCHED_ADOPTED,
    Vouches,
    check_vouched,
)
from tests.consensus.test_verify import _BACKEND, _forged, _key, _verify

N, F = 4, 1


def _vertex(seed: int) -> vertex_pb2.Vertex:
    return make_vertex(_key(), os.urandom(64), [], 1_000 + seed)


def _counts() -> tuple[float, float, float]:
    return VERTEX_OK._value.get(), VERTEX_BAD._value.get(), VOUCHED_ADOPTED._value.get()


def test_distinct_members_count_and_each_members_claims_are_bounded() -> None:
    vouches = Vouches(N, adopt_at=F + 1, per_member=3)
    a, b, c, d = (bytes([i]) * 32 for i in range(4))
    vouches.add(1, [a, a, b])
    vouches.add(1, [a])
    assert vouches.count(a) == 1 and not vouches.vouched(a)  # one member, however often
    vouches.add(2, [a])
    assert vouches.count(a) == 2 and vouches.vouched(a)
    vouches.add(1, [c, d])  # member 1 holds 3 at most: its oldest (b) goes, a was renewed
    assert vouches.count(b) == 0 and vouches.count(a) == 2
    vouches.add(3, [bytes([9]) * 32 for _ in range(10)])  # a flood evicts only its own
    assert vouches.count(a) == 2 and len(vouches) == 3 + 1 + 1
    vouches.forget([a])
    assert vouches.count(a) == 0


def test_f_claims_on_a_badly_signed_copy_are_not_enough() -> None:
    forged = _forged(_vertex(1))
    vouches = Vouches(N, adopt_at=F + 1)
    vouches.add(3, [signed_digest(forged)])  # a Byzantine member lies: f claims
    verifier = Verifier(_BACKEND, threads=1, vouches=vouches)
    try:
        before = _counts()
        assert _verify(verifier, [forged]) == [False]
        after = _counts()
    finally:
        verifier.close()
    assert (after[1] - before[1], after[2] - before[2]) == (1, 0)  # verified, not adopted


def test_a_claim_on_a_copy_found_invalid_is_its_claimants_fault_once() -> None:
    """A member vouched for a badly signed copy: when this node verifies it and finds it
    invalid, the claimant is reported (a signed lie: an honest member vouches only for
    copies it found valid), once; the copy is then known invalid here."""
    forged, good = _forged(_vertex(5)), _vertex(6)
    vouches = Vouches(N, adopt_at=F + 1)
    vouches.add(3, [signed_digest(forged), signed_digest(good)])
    verifier = Verifier(_BACKEND, threads=2, vouches=vouches)
    blamed: list[tuple[int, bytes]] = []
    verifier.on_false_claim = lambda member, copy: blamed.append((member, copy))
    try:
        assert _verify(verifier, [forged, good]) == [False, True]
        assert blamed == [(3, signed_digest(forged))]  # not for the valid copy
        assert _verify(verifier, [forged]) == [False]  # the cached verdict
        assert blamed == [(3, signed_digest(forged))]
        assert vouches.count(signed_digest(forged)) == 0 and vouches.count(signed_digest(good))
        assert verifier.known_invalid([signed_digest(forged), signed_digest(good)]) == [
            signed_digest(forged)
        ]
    finally:
        verifier.close()


def test_f_plus_one_claims_make_a_copy_valid_unverified_and_only_that_copy() -> None:
    good = _vertex(2)
    twin = _forged(good)  # the same content under another signature
    vouches = Vouches(N, adopt_at=F + 1)
    for member in (1, 2):
        vouches.add(member, [signed_digest(good)])
    verifier = Verifier(_BACKEND, threads=1, vouches=vouches)
    try:
        before = _counts()
        assert _verify(verifier, [good, twin]) == [True, False]
        after = _counts()
        # the adopted verdict is cached: this node may vouch for it in turn
        assert verifier.valid_copies([signed_digest(good), signed_digest(twin)]) == [
            signed_digest(good)
        ]
        verifier.forget([signed_digest(good)], [vertex_hash(good)])
        assert vouches.count(signed_digest(good)) == 0
    finally:
        verifier.close()
    # good: adopted, never verified here; twin: verified (the claims name another copy)
    assert (after[0] - before[0], after[1] - before[1], after[2] - before[2]) == (0, 1, 1)


def test_without_vouches_every_copy_is_verified() -> None:
    good = _vertex(3)
    verifier = Verifier(_BACKEND, threads=1)
    try:
        before = _counts()
        assert _verify(verifier, [good]) == [True]
        after = _counts()
    finally:
        verifier.close()
    assert (after[0] - before[0], after[2] - before[2]) == (1, 0)


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ([b"\x01" * 32] * 3, None),
        ([b"\x01" * 31], "a vouched digest of 31 bytes"),
        ([b"\x01" * 33], "a vouched digest of 33 bytes"),
        ([b"\x01" * 32] * (MAX_VOUCHED + 1), f"{MAX_VOUCHED + 1} vouched copies"),
    ],
)
def test_a_claim_list_is_bounded_and_made_of_digests(
    claims: list[bytes], problem: str | None
) -> None:
    found = check_vouched(claims)
    assert found == problem or (problem is not None and found is not None and problem in found)
