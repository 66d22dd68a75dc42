"""The gateway's hex decoding: exactly an even number of 0-9a-fA-F digits, nothing else."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.gateway.codec import decode_hex
from services.gateway.errors import ApiError

HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


@given(st.text(alphabet="0123456789abcdefABCDEF \t\n\u0661\u00e9xg", max_size=40))
def test_decode_hex_accepts_exactly_pairs_of_hex_digits(text: str) -> None:
    if HEX.fullmatch(text):
        assert decode_hex(text, "field") == bytes.fromhex(text)
    else:
        with pytest.raises(ApiError) as refused:
            decode_hex(text, "field")
        assert refused.value.code == "bad_hex" and "field" in refused.value.message


def test_a_non_string_is_a_bad_request() -> None:
    with pytest.raises(ApiError) as refused:
        decode_hex(12, "field")
    assert refused.value.code == "bad_request"
