"""The max-min fairness rule every bounded public slot set shares (cretoai/fairness.py)."""

from __future__ import annotations

from cretoai.fairness import holder_to_evict


def test_a_newcomer_two_short_of_the_largest_holder_takes_its_slot() -> None:
    assert holder_to_evict({"a": 4}, "b") == "a"
    assert holder_to_evict({"a": 4, "b": 2}, "b") == "a"
    assert holder_to_evict({"a": 1, "b": 3, "c": 2}, "a") == "b"


def test_clients_one_apart_are_left_alone() -> None:
    assert holder_to_evict({"a": 4, "b": 3}, "b") is None
    assert holder_to_evict({"a": 1, "b": 1}, "c") is None  # one each: settled, no churn
    assert holder_to_evict({"a": 3}, "a") is None  # the largest holder itself
    assert holder_to_evict({}, "a") is None
