"""The ledger's verdicts on writes, without a server: what is unknown, lost, or a phantom."""

from __future__ import annotations

import pytest

from tests.reliability.ledger import Entry, Ledger


def create(status: int | None, code: str | None = None, reason: str | None = None) -> Entry:
    return Entry("create_user", 0.0, status=status, code=code, reason=reason, written="a@x.com")


@pytest.mark.parametrize(
    ("entry", "unknown"),
    [
        (create(201), False),
        (create(None), True),  # no answer at all
        (create(409, "unique_violation", "conflict"), False),
        # The statement never reached the server: nothing was written, whatever the
        # family ("reason") says.
        (create(503, "connect_failed", "database_unavailable"), False),
        (create(503, "cannot_connect_now", "database_unavailable"), False),
        (create(503, "pool_exhausted", "pool_exhausted"), False),
        (create(503, "too_many_waiting", "pool_exhausted"), False),
        # It may have run, even committed, before the answer was lost.
        (create(503, "connection_lost", "database_unavailable"), True),
        (create(503, "admin_shutdown", "database_unavailable"), True),
        (create(503, "crash_shutdown", "database_unavailable"), True),
        (create(503, "statement_timeout", "statement_timeout"), True),
        # The shutdown guard's 503s: refused on arrival (the app never saw it), or cut
        # at the end of the grace period while it ran (it may have committed).
        (create(503, "shutting_down", "shutting_down"), False),
        (create(503, "shutdown_grace_expired", "shutting_down"), True),
        # A body without a code proves nothing.
        (create(503, None, "shutting_down"), True),
    ],
)
def test_unknown_outcome_is_decided_by_the_code(entry: Entry, unknown: bool) -> None:
    assert (Ledger([entry]).unknown == [entry]) is unknown


def test_a_definite_failure_that_was_stored_is_a_phantom() -> None:
    refused = create(503, "connect_failed", "database_unavailable")
    lost = create(503, "connection_lost", "database_unavailable")
    lost.written = "b@x.com"
    ledger = Ledger([refused, lost])
    assert ledger.phantoms({"a@x.com", "b@x.com"}, {}) == [refused]


def rename(started: float, status: int | None, code: str | None = None) -> Entry:
    return Entry(
        "rename_user", started, status=status, code=code, written=f"r{started:g}", user_id=7
    )


RENAMES = [
    rename(1, 200),
    rename(2, 200),
    rename(3, 503, "connection_lost"),  # unknown outcome
    rename(4, 503, "pool_exhausted"),  # nothing written
]


@pytest.mark.parametrize(
    ("final", "lost", "phantom"),
    [
        ("r2", [], []),  # the last acknowledged rename
        ("r3", [], []),  # a later rename of unknown outcome
        ("r1", ["r2"], []),  # the last acknowledged rename was lost
        ("seed", ["r2"], []),
        ("r4", ["r2"], ["r4"]),  # a rename refused before it ran was stored anyway
    ],
)
def test_a_users_final_name_is_its_last_acknowledged_rename_or_a_later_unknown_one(
    final: str, lost: list[str], phantom: list[str]
) -> None:
    ledger = Ledger(list(reversed(RENAMES)))  # in the order they ended: any order
    assert [e.written for e in ledger.lost_renames({7: final})] == lost
    assert [e.written for e in ledger.phantoms(set(), {7: final})] == phantom
    assert ledger.renamed_users() == 1


def test_an_unknown_rename_before_the_last_acknowledged_one_does_not_excuse_it() -> None:
    early = rename(0.5, None)  # no answer, then the client renamed again: acknowledged
    ledger = Ledger([early, *RENAMES[:2]])
    assert [e.written for e in ledger.lost_renames({7: "r0.5"})] == ["r2"]
