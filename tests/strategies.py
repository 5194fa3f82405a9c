"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st


def passwords() -> st.SearchStrategy[str]:
    """Passwords of the characters a URL can carry, marked so they cannot occur by chance.

    Without the marker Hypothesis finds passwords such as "pool_recycle" that appear in
    a repr as a field name, not as a leak.
    """
    alphabet = st.characters(
        codec="ascii", categories=("L", "N", "P", "S"), exclude_characters="%/@:?#[]"
    )
    return st.text(alphabet, min_size=4, max_size=40).map(lambda p: f"Q7x~{p}~x7Q")


def handler_outcomes() -> st.SearchStrategy[tuple[str, int]]:
    """What a handler does after writing: return a 2xx/3xx, raise an HTTP error, or crash."""
    return st.one_of(
        st.tuples(st.just("return"), st.sampled_from([200, 201, 202, 204, 301, 304])),
        st.tuples(st.just("http_error"), st.integers(min_value=400, max_value=599)),
        st.tuples(st.just("crash"), st.just(500)),
    )
