"""The one path by which a conversation changes (routing.change): a plan
against a fresh read, one compare-and-set, one retry policy for conflicts,
undo of what was reserved outside the database, dispatch only after commit.
And the shape of the code that keeps it the only path."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from models import Conversation, Event, Message
from routing.errors import ContendedConversation, NotFound
from tests.support import customer_says
from tests.support import bearer, settle

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def conversation_id(app):
    customer_says(app, "hello")
    settle(app)
    return Conversation.get().id


def _someone_else_writes(conversation_id):
    Conversation.update(version=Conversation.version + 1).where(Conversation.id == conversation_id).execute()


def test_a_conflict_is_planned_again_from_a_fresh_read(rt, conversation_id):
    seen, undone = [], []

    def plan(change):
        seen.append(change.conv.version)
        change.on_rollback(lambda: undone.append(change.conv.id))
        change.set({"group": "billing"})
        change.audit("test", change.conv.state, change.conv.state, "test")
        if len(seen) == 1:
            _someone_else_writes(conversation_id)      # lands between our read and our commit
        return "done"

    assert rt.changes.run(conversation_id, plan) == "done"
    assert seen[1] == seen[0] + 1                       # the second plan read the other writer's version
    assert undone == [conversation_id]                  # the losing attempt's reservation was given back
    row = Conversation.get_by_id(conversation_id)
    assert (row.group, row.version) == ("billing", seen[1] + 1)
    assert Event.select().where(Event.reason == "test").count() == 1


def test_a_conversation_that_keeps_changing_gives_up_loudly_and_changes_nothing(rt, conversation_id):
    from routing.change import MAX_ATTEMPTS

    attempts, undone = [], []
    events_before = Event.select().count()

    def plan(change):
        attempts.append(1)
        change.on_rollback(lambda: undone.append(1))
        change.set({"group": "never"})
        change.say(sender="system", text="never sent")
        _someone_else_writes(conversation_id)

    with pytest.raises(ContendedConversation) as raised:
        rt.changes.run(conversation_id, plan)
    assert raised.value.status == 503 and raised.value.code == "conversation_busy"
    assert len(attempts) == len(undone) == MAX_ATTEMPTS
    assert Conversation.get_by_id(conversation_id).group != "never"
    assert Event.select().count() == events_before
    assert not Message.select().where(Message.text == "never sent").exists()


def test_a_refusal_raised_by_a_plan_undoes_its_reservations_and_writes_nothing(rt, conversation_id):
    from routing.errors import Conflict

    undone = []
    version = Conversation.get_by_id(conversation_id).version

    def plan(change):
        change.on_rollback(lambda: undone.append(1))
        change.set({"group": "never"})
        raise Conflict("no", code="wrong_state")

    with pytest.raises(Conflict):
        rt.changes.run(conversation_id, plan)
    assert undone == [1] and Conversation.get_by_id(conversation_id).version == version


def test_nothing_is_dispatched_before_the_commit_and_everything_once_after(rt, conversation_id, monkeypatch):
    dispatched, attempts = [], []
    monkeypatch.setattr(rt.changes, "_dispatch", lambda effects: dispatched.append(effects))

    def plan(change):
        attempts.append(change.effects)
        change.set({"group": "billing"})
        if len(attempts) == 1:
            _someone_else_writes(conversation_id)

    rt.changes.run(conversation_id, plan)
    assert len(attempts) == 2 and dispatched == [attempts[1]]     # the lost attempt was never dispatched
    (event,) = dispatched[0].live
    assert event["data"]["version"] == Conversation.get_by_id(conversation_id).version


def test_an_unknown_conversation_is_not_found(rt):
    with pytest.raises(NotFound) as raised:
        rt.changes.run("c_nope", lambda change: None)
    assert raised.value.details == {"resource": "conversation"}


def test_every_missing_resource_answers_one_error_shape(client, admin_token, bot_token):
    cases = [("GET", "/api/v1/conversations/c_nope", admin_token, None),
             ("POST", "/api/v1/conversations/c_nope/escalate", bot_token, {"reason": "x"}),
             ("POST", "/api/v1/conversations/c_nope/release", admin_token, {}),
             ("POST", "/api/v1/bot/replies", bot_token, {"conversation_id": "c_nope", "turn_id": "t_x", "text": "hi"})]
    for method, path, token, body in cases:
        response = client.open(path, method=method, headers=bearer(token), json=body)
        assert response.status_code == 404, (path, response.json)
        assert response.json["error"] == "not_found", (path, response.json)
        assert set(response.json) == {"error", "message", "details"}


def test_a_busy_conversation_answers_503_with_retry_after(app, client, bot_token, conversation_id, monkeypatch):
    from routing import change as change_module

    original = change_module.Change.set

    def set_and_race(self, columns):
        original(self, columns)
        _someone_else_writes(self.conv.id)

    monkeypatch.setattr(change_module.Change, "set", set_and_race)
    response = client.post(f"/api/v1/conversations/{conversation_id}/escalate", headers=bearer(bot_token),
                           json={"reason": "customer_request"})
    assert response.status_code == 503 and response.json["error"] == "conversation_busy"
    assert response.headers["Retry-After"]


# -- the shape that keeps it the only path -----------------------------------------------------------

def _imports(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.module or "", [alias.name for alias in node.names], node.level
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], 0


def _modules():
    for folder in ("routing", "blueprints", "jobs", "models", "integrations", "bot"):
        yield from sorted((ROOT / folder).rglob("*.py"))
    yield from (ROOT / name for name in ("app.py", "runtime.py", "cli.py", "config.py"))


# -- group commit: several conversations' changes in one transaction ------------------------------

@pytest.fixture
def three_conversations(app):
    for wa_id in ("15550000001", "15550000002", "15550000003"):
        customer_says(app, "hello", wa_id=wa_id)
    settle(app)
    return [c.id for c in Conversation.select().order_by(Conversation.id)]


def _commits(monkeypatch) -> list[int]:
    """Counts the write transactions that commit (routing.change's group commit)."""
    import routing.change as change_module

    counted = []
    real = change_module.write_transaction

    def counting():
        counted.append(1)
        return real()
    monkeypatch.setattr(change_module, "write_transaction", counting)
    return counted


def _tag(group: str, then=None):
    def plan(change):
        change.set({"group": group})
        change.audit("test", change.conv.state, change.conv.state, "test")
        if then:
            then(change)
        return group
    return plan


def test_a_group_of_changes_commits_in_one_transaction(rt, three_conversations, monkeypatch):
    dispatched = []
    monkeypatch.setattr(rt.changes, "_dispatch", lambda effects: dispatched.append(effects))
    commits = _commits(monkeypatch)
    outcomes = rt.changes.run_group([(c, _tag(f"g{n}")) for n, c in enumerate(three_conversations)])
    assert outcomes == ["g0", "g1", "g2"]
    # One commit, and one dispatch for the group's after-commit work (a few Redis round
    # trips for the round, not a few per conversation).
    assert len(commits) == 1 and len(dispatched) == 1
    assert [event["data"]["group"] for event in dispatched[0].live] == ["g0", "g1", "g2"]
    assert [Conversation.get_by_id(c).group for c in three_conversations] == ["g0", "g1", "g2"]


def test_a_conflict_in_a_group_plans_that_one_again_alone_and_keeps_the_others(rt, three_conversations):
    first, second, third = three_conversations
    reads = []

    def moved_meanwhile(change):
        reads.append(change.conv.version)
        if len(reads) == 1:
            _someone_else_writes(second)           # lands between the group's read and its commit
    outcomes = rt.changes.run_group([(first, _tag("a")), (second, _tag("b", moved_meanwhile)), (third, _tag("c"))])
    assert outcomes == ["a", "b", "c"]
    assert reads[1] == reads[0] + 1                 # planned again from a fresh read
    assert [Conversation.get_by_id(c).group for c in three_conversations] == ["a", "b", "c"]
    assert Event.select().where(Event.reason == "test").count() == 3      # the losing attempt left nothing


def test_a_plan_that_fails_in_a_group_fails_alone(rt, three_conversations):
    from routing.errors import Conflict

    first, second, third = three_conversations

    def refuse(change):
        raise Conflict("not now")
    outcomes = rt.changes.run_group([(first, _tag("a")), (second, refuse), (third, _tag("c")),
                                     ("c_missing", _tag("x"))])
    assert outcomes[0] == "a" and outcomes[2] == "c"
    assert isinstance(outcomes[1], Conflict) and isinstance(outcomes[3], NotFound)
    assert [Conversation.get_by_id(c).group for c in (first, third)] == ["a", "c"]


def test_a_group_whose_transaction_breaks_goes_again_one_by_one(rt, three_conversations, monkeypatch):
    """A statement that breaks the whole transaction (not a compare-and-set)
    lands on its own item; the others commit when planned again alone."""
    first, second, third = three_conversations
    broken = []

    def breaks_once(change):
        if not broken:
            broken.append(1)
            change.effects.writes.append(("INSERT INTO no_such_table VALUES (1)", (), False, None))
    outcomes = rt.changes.run_group([(first, _tag("a")), (second, _tag("b", breaks_once)), (third, _tag("c"))])
    assert outcomes == ["a", "b", "c"]
    assert [Conversation.get_by_id(c).group for c in three_conversations] == ["a", "b", "c"]
    assert Event.select().where(Event.reason == "test").count() == 3 and broken


def test_no_module_imports_another_modules_private_name():
    offenders = [f"{path.relative_to(ROOT)}: {module}.{name}"
                 for path in _modules() for module, names, _ in _imports(path)
                 for name in names if name.startswith("_") and name != "__future__" and module != "__future__"]
    assert offenders == []


def test_routing_does_not_import_the_builtin_bot():
    offenders = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "routing").glob("*.py"))
                 for module, _, level in _imports(path) if module == "bot" or module.startswith("bot.")]
    assert offenders == []


def test_only_the_change_module_compare_and_sets_a_conversation():
    """`version = version + 1` (the compare-and-set) is written in one place."""
    writers = [str(path.relative_to(ROOT)) for path in _modules()
               if 'increment="version"' in path.read_text() or "VersionConflict:" in path.read_text()]
    assert writers == ["routing/change.py"]


def test_an_offer_that_keeps_losing_after_a_commit_does_not_fail_what_committed(client, bot_token, conversation_id,
                                                                                monkeypatch):
    """The escalation commits; offering it to an agent is dispatched after. If
    that offer keeps losing its compare-and-set, the timers offer it next tick:
    the caller must not be told 503 'nothing changed' about a change that happened."""
    from routing import assignment

    def contended(changes, reservations, conversation_id):
        raise ContendedConversation(conversation_id, 8)

    monkeypatch.setattr(assignment, "offer_next", contended)
    response = client.post(f"/api/v1/conversations/{conversation_id}/escalate", headers=bearer(bot_token),
                           json={"reason": "customer_request"})
    assert response.status_code == 200, response.json
    assert Conversation.get_by_id(conversation_id).state == "PENDING_AGENT"
