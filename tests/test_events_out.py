"""Events to n8n: signed, retried with backoff, kept in a failed list, replayable."""
import pytest

from models import Delivery
from tests.support import ASK_FOR_A_HUMAN, customer_says
from tests.support import bearer, settle, settle_until


@pytest.fixture
def notify_app(app_factory, n8n):
    return app_factory(N8N_NOTIFY_URL=n8n.url_for("baton-notify"), EVENT_MAX_ATTEMPTS=3)


def delivered_or_failed(app):
    """Run jobs until every delivery is delivered or failed (retries after their backoff included)."""
    settle_until(app, lambda: not Delivery.select().where(Delivery.status == "pending").exists(),
                 timeout=15, what="deliveries to settle")


def test_a_handoff_is_announced_to_the_notify_branch(notify_app, n8n):
    customer_says(notify_app, ASK_FOR_A_HUMAN)
    delivered_or_failed(notify_app)
    [event] = n8n.received("handoff.requested")
    assert event["signature_ok"]
    assert event["json"]["reason"] == "explicit_request"
    assert event["json"]["conversation"]["state"] == "PENDING_AGENT"
    assert event["json"]["console_url"].startswith("http://baton.test/")
    assert Delivery.get().status == "delivered"


def test_a_failing_n8n_is_retried_until_it_answers(notify_app, n8n, fast_retries):
    n8n.fail_next(2, 500, {"message": "workflow crashed"})
    customer_says(notify_app, ASK_FOR_A_HUMAN)
    delivered_or_failed(notify_app)
    delivery = Delivery.get()
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert len(n8n.received("handoff.requested")) == 1
    deliveries = {r[2].get("X-Baton-Delivery") for r in n8n.requests}
    assert deliveries == {delivery.id}           # the same delivery id on every try


def test_a_delivery_that_keeps_failing_lands_in_the_failed_list_and_can_be_replayed(
        notify_app, n8n, fast_retries, admin_token):
    n8n.fail_next(3, 503, "maintenance")
    client = notify_app.test_client()
    customer_says(notify_app, ASK_FOR_A_HUMAN)
    delivered_or_failed(notify_app)
    failed = client.get("/api/v1/admin/deliveries?status=failed", headers=bearer(admin_token))
    [item] = failed.json["items"]
    assert item["status"] == "failed" and item["attempts"] == 3 and "503" in item["last_error"]
    replay = client.post(f"/api/v1/admin/deliveries/{item['id']}/replay",
                         headers=bearer(admin_token))
    assert replay.status_code == 200 and replay.json["status"] == "pending"
    delivered_or_failed(notify_app)
    assert Delivery.get_by_id(item["id"]).status == "delivered"
    assert len(n8n.received("handoff.requested")) == 1


def test_replaying_a_pending_delivery_is_a_409_and_changes_nothing(notify_app, n8n, admin_token, monkeypatch):
    monkeypatch.setattr("jobs.deliver.backoff_seconds", lambda attempt, retry_after=None: 600)
    n8n.fail_next(1, 500, "down")
    client = notify_app.test_client()
    customer_says(notify_app, ASK_FOR_A_HUMAN)
    settle(notify_app)
    delivery = Delivery.get()
    assert (delivery.status, delivery.attempts) == ("pending", 1)
    response = client.post(f"/api/v1/admin/deliveries/{delivery.id}/replay",
                           headers=bearer(admin_token))
    assert response.status_code == 409 and response.json["error"] == "already_pending"
    assert Delivery.get_by_id(delivery.id).attempts == 1


def test_replaying_an_unknown_delivery_is_a_404(client, admin_token):
    response = client.post("/api/v1/admin/deliveries/dl_nope/replay",
                           headers=bearer(admin_token))
    assert response.status_code == 404


def test_the_cli_lists_failed_deliveries_and_replays_one(notify_app, n8n, fast_retries):
    n8n.fail_next(3, 500, "down")
    customer_says(notify_app, ASK_FOR_A_HUMAN)
    delivered_or_failed(notify_app)
    runner = notify_app.test_cli_runner()
    listed = runner.invoke(args=["baton", "deliveries", "--failed"])
    delivery = Delivery.get()
    assert delivery.id in listed.output and "failed" in listed.output
    replayed = runner.invoke(args=["baton", "deliveries", "--replay", delivery.id])
    assert replayed.exit_code == 0, replayed.output
    delivered_or_failed(notify_app)
    assert Delivery.get_by_id(delivery.id).status == "delivered"
