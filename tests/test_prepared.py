"""models.prepared: hot statements rendered once per database, then only bound."""
from __future__ import annotations

from datetime import datetime

from models import BotTurn
from models.prepared import Prepared


def test_a_prepared_statement_is_peewees_own_rendered_once_and_bound_anew(app):
    built = []

    def earlier_turns(conversation_id, turn_id, created_at):
        built.append(1)
        return (BotTurn.update(deadline_at=None)
                .where((BotTurn.conversation == conversation_id) & (BotTurn.id != turn_id)
                       & (BotTurn.created_at <= created_at) & BotTurn.deadline_at.is_null(False)))

    prepared = Prepared(earlier_turns)
    for n in range(3):
        args = (f"c_{n}", f"t_{n}", datetime(2026, 12, 2, 0, 0, n, 500))
        assert prepared.statement(*args) == (lambda q: (q.sql()[0], list(q.sql()[1])))(earlier_turns(*args))
    assert len(built) == 1 + 3          # rendered once by `prepared`, and three times above by the check
