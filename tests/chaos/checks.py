"""What the chaos suite counts once everything has settled, read from Baton's database,
the load's ledger and what the fake Graph API accepted. Every count must be 0.

- lost: acknowledged (200) but not stored, or stored and never routed.
- duplicated: a message stored twice, routed to the bot twice (two turns), or a turn
  answered twice.
- misordered: per conversation, two messages routed to the bot in the opposite of
  their payload order (timestamp, then seq) although the earlier one was already
  stored STORED_BEFORE seconds before the later one was routed (a message that had not
  arrived yet cannot be routed first).
- bot_over_human: a bot reply the provider accepted while a person held the
  conversation: after its `claimed` event (plus IN_FLIGHT_GRACE, the one call that may
  already be on the wire when control changes) and before the event that ended the
  person's hold.
- sent_twice: a Baton message (biz_opaque_callback_data) the provider accepted more
  (or a maintenance notice a customer got twice; see sent_twice)
  than once, or a send without Baton's reference.
- timers_not_fired: a deadline (offer, waiting for a person, an unanswered customer,
  a typing hold) more than TIMER_GRACE seconds past without its outcome.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta

from models.base import epoch_seconds

STORED_BEFORE = 1.0
IN_FLIGHT_GRACE = 2.0
TIMER_GRACE = 3.0


def lost_and_duplicated(acked: dict[str, tuple[str, int]]) -> tuple[dict, dict]:
    from models import BotTurn, Message

    rows = list(Message.select(Message.id, Message.provider_message_id, Message.routed_to)
                .where(Message.direction == "in"))
    stored = Counter(m.provider_message_id for m in rows)
    routed = {m.provider_message_id for m in rows if m.routed_to is not None}
    lost = {"not_stored": sorted(mid for mid in acked if mid not in stored),
            "not_routed": sorted(mid for mid in acked if mid in stored and mid not in routed)}
    turns = Counter(t.message_id for t in BotTurn.select(BotTurn.message_id))
    answers = Counter(m.turn_id for m in Message.select(Message.turn_id)
                      .where((Message.direction == "out") & (Message.sender == "bot")))
    duplicated = {"stored_twice": sorted(mid for mid, n in stored.items() if n > 1),
                  "routed_twice": sorted(mid for mid, n in turns.items() if n > 1),
                  "answered_twice": sorted(tid for tid, n in answers.items() if tid and n > 1)}
    return lost, duplicated


def misordered() -> list[tuple[str, str, str]]:
    """(conversation, earlier message, later message) routed the wrong way round."""
    from models import BotTurn, Message

    turns = {t.message_id: epoch_seconds(t.created_at) for t in BotTurn.select(BotTurn.message_id,
                                                                                 BotTurn.created_at)}
    by_conversation = defaultdict(list)
    for m in Message.select(Message.id, Message.conversation, Message.sent_at, Message.seq, Message.received_at) \
            .where(Message.direction == "in"):
        if m.id not in turns:
            continue
        by_conversation[m.conversation_id].append((epoch_seconds(m.sent_at), m.seq, epoch_seconds(m.received_at),
                                                   turns[m.id], m.id))
    wrong = []
    for conversation_id, messages in by_conversation.items():
        messages.sort()
        for i, (_, _, stored_a, routed_a, a) in enumerate(messages):
            for _, _, _, routed_b, b in messages[i + 1:]:
                if routed_a > routed_b and stored_a < routed_b - STORED_BEFORE:
                    wrong.append((conversation_id, a, b))
    return wrong


def human_holds() -> dict[str, list[tuple[float, float]]]:
    """Per conversation, the spans a person held it: from `claimed` to the next event
    that left AGENT_CONTROLLED (or forever)."""
    from models import AGENT_CONTROLLED, Event

    spans = defaultdict(list)
    open_since: dict[str, float] = {}
    for e in Event.select().order_by(Event.created_at, Event.id):
        at = epoch_seconds(e.created_at)
        if e.to_state == AGENT_CONTROLLED and e.conversation_id not in open_since:
            open_since[e.conversation_id] = at
        elif e.to_state != AGENT_CONTROLLED and e.conversation_id in open_since:
            spans[e.conversation_id].append((open_since.pop(e.conversation_id), at))
    for conversation_id, since in open_since.items():
        spans[conversation_id].append((since, float("inf")))
    return spans


def bot_over_human(accepted) -> tuple[list, int]:
    """Bot replies accepted inside a person's hold (past the grace), and how many
    arrived within the grace (the call already on the wire)."""
    from models import Message

    bot = {m.id: m.conversation_id for m in Message.select(Message.id, Message.conversation)
           .where((Message.direction == "out") & (Message.sender == "bot"))}
    holds = human_holds()
    over, in_flight = [], 0
    for sent in accepted:
        conversation_id = bot.get(sent.reference)
        if conversation_id is None:
            continue
        for start, end in holds.get(conversation_id, ()):
            if start < sent.at < end:
                if sent.at > start + IN_FLIGHT_GRACE:
                    over.append((conversation_id, sent.reference, round(sent.at - start, 2)))
                else:
                    in_flight += 1
    return over, in_flight


def sent_twice(accepted, maintenance_notice: str | None = None) -> list:
    """References accepted more than once, and sends without one. The only send Baton
    makes without a reference is the fail-open maintenance notice (it has no database
    row): each customer may get it once in the run (MAINTENANCE_NOTICE_WINDOW is longer)."""
    references = Counter(a.reference for a in accepted if a.reference is not None)
    twice = [(ref, n) for ref, n in references.items() if n > 1]
    notices = Counter(a.to for a in accepted if a.reference is None and maintenance_notice
                      and a.text == maintenance_notice)
    twice += [(f"maintenance notice to {to}", n) for to, n in notices.items() if n > 1]
    unexplained = sum(1 for a in accepted if a.reference is None
                      and not (maintenance_notice and a.text == maintenance_notice))
    return twice + ([(None, unexplained)] if unexplained else [])


def overdue_timers(settings) -> dict[str, list[str]]:
    from models import AGENT_CONTROLLED, PENDING_AGENT, Conversation, utcnow

    late = utcnow() - timedelta(seconds=TIMER_GRACE)
    ids = lambda query: [c.id for c in query]       # noqa: E731
    c = Conversation
    return {
        "offer": ids(c.select(c.id).where((c.state == PENDING_AGENT) & (c.offer_expires_at < late))),
        "pending": ids(c.select(c.id).where(
            (c.state == PENDING_AGENT) & (c.pending_since < late - timedelta(seconds=settings["PENDING_TIMEOUT"])))),
        "unresponsive": ids(c.select(c.id).where(
            (c.state == AGENT_CONTROLLED) & c.assigned_agent_id.is_null(False)
            & (c.awaiting_agent_since < late - timedelta(seconds=settings["AGENT_RESPONSE_TIMEOUT"])))),
        "typing_hold": ids(c.select(c.id).where(c.held_since.is_null(False) & (c.typing_until < late))),
    }


def timer_outcomes() -> Counter:
    from models import Event

    reasons = ("offer_expired", "offer_withdrawn", "pending_timeout", "agent_unresponsive", "typing_expired")
    return Counter(e.reason for e in Event.select(Event.reason).where(Event.reason.in_(reasons)))


def outbound_outcomes() -> dict:
    from models import Message

    rows = Message.select(Message.sender, Message.status, Message.error_title).where(Message.direction == "out")
    return dict(Counter((m.sender, m.status, m.error_title) if m.status == "failed" else (m.sender, m.status)
                        for m in rows))
