"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st


def passwords() -> st.SearchStrategy[str]:
    """Passwords of the characters a URL can carry once percent-encoded, long enough to be unique."""
    alphabet = st.characters(
        codec="ascii", categories=("L", "N", "P", "S"), exclude_characters="%/@:?#[]"
    )
    return st.text(alphabet, min_size=12, max_size=40).filter(
        lambda p: p.strip() == p and "***" not in p
    )
