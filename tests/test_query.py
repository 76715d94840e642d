"""The query-string parser of the postback path gives what urllib's parse_qsl gives."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calltags.http import query_pairs

# Query text built from the characters that matter to parsing, escapes (valid, partial,
# invalid UTF-8) and some plain and non-ASCII text.
_PIECES = st.sampled_from(
    ["&", "=", "+", "%", "%2B", "%20", "%3D", "%26", "%C3%A9", "%E2%82", "%ZZ", "%f", "a", "Zz9",
     "caller_number", "é", "~", ".", " ", "&&", "=="]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(_PIECES, max_size=30).map("".join))
def test_query_pairs_match_parse_qsl(text: str) -> None:
    assert query_pairs(text, 1000) == parse_qsl(text, keep_blank_values=True, max_num_fields=1000)


def test_more_fields_than_allowed_are_refused_like_parse_qsl() -> None:
    text = "&".join(f"t{n}=1" for n in range(11))
    with pytest.raises(ValueError):
        parse_qsl(text, max_num_fields=10)
    with pytest.raises(ValueError):
        query_pairs(text, 10)
    assert len(query_pairs(text, 11)) == 11
