"""Ops endpoints, the OpenAPI document against Baton's own reference (docs/api.md), settings and the CLI."""
import re
from pathlib import Path

import pytest

from config import ConfigError, load_settings
from models import ApiToken, OutboxEntry
from tests.support import text_webhook

API_REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "api.md"

# What Baton promises its clients: routes, the answers each can give, and the fields of the
# objects they carry. docs/api.md (generated from /openapi.json) is the living reference; these
# pins make dropping any of them a deliberate edit here, never a side effect.
PROMISED = {
    ("/webhooks/whatsapp", "get"): {"200", "403"},
    ("/webhooks/whatsapp", "post"): {"200", "400", "401", "413", "503"},
    ("/webhooks/wasender", "post"): {"200", "400", "401", "413", "503"},
    ("/api/v1/conversations", "get"): {"200"},
    ("/api/v1/conversations/{conversation_id}", "get"): {"200", "404"},
    ("/api/v1/conversations/{conversation_id}/messages", "get"): {"200"},
    ("/api/v1/conversations/{conversation_id}/escalate", "post"): {"200"},
    ("/api/v1/conversations/{conversation_id}/claim", "post"): {"200", "409"},
    ("/api/v1/conversations/{conversation_id}/messages", "post"): {"202", "403", "409", "422"},
    ("/api/v1/conversations/{conversation_id}/typing", "post"): {"204"},
    ("/api/v1/conversations/{conversation_id}/release", "post"): {"200"},
    ("/api/v1/conversations/{conversation_id}/transfer", "post"): {"200"},
    ("/api/v1/conversations/{conversation_id}/close", "post"): {"200"},
    ("/api/v1/bot/replies", "post"): {"202", "200", "409"},
    ("/api/v1/agents", "get"): {"200"},
    ("/api/v1/agents", "post"): {"201"},
    ("/api/v1/agents/me", "patch"): {"200"},
    ("/api/v1/agents/me/heartbeat", "post"): {"200"},
    ("/api/v1/events", "get"): {"200"},
    ("/healthz", "get"): {"200"}, ("/readyz", "get"): {"200", "503"}, ("/metrics", "get"): {"200"},
    ("/openapi.json", "get"): {"200"},
}
PROMISED_FIELDS = {
    "Conversation": {"id", "state", "version", "channel", "contact", "assigned_agent_id", "offered_agent_id",
                     "group", "escalation", "cooldown_remaining", "pending_since", "last_inbound_at",
                     "window_expires_at", "metadata", "updated_at"},
    "Message": {"id", "conversation_id", "direction", "sender", "agent_id", "type", "text", "media",
                "provider_message_id", "sent_at", "received_at", "routed_to", "status", "error", "seq"},
    "WebhookAck": {"messages", "statuses", "duplicates", "ignored"},
    "Readiness": {"database", "redis", "storage"},
    "Error": {"error", "message", "details"},
}
BOT_REPLY_FIELDS = {"conversation_id", "turn_id", "text", "escalate", "reason", "intent", "urgency", "language",
                    "metadata"}


def reference_routes() -> set[tuple[str, str]]:
    """The routes docs/api.md describes, from its `### `METHOD /path`` headings."""
    return {(path, method.lower())
            for method, path in re.findall(r"^### `([A-Z]+) (/\S*)`$", API_REFERENCE.read_text(), re.M)}


def reference_fields(schema: str) -> set[str]:
    """The fields docs/api.md's table for `schema` lists."""
    section = re.search(rf"^### {schema}\n(.*?)(?=^### |\Z)", API_REFERENCE.read_text(), re.M | re.S).group(1)
    return set(re.findall(r"^\| `(\w+)` \|", section, re.M))


def reference_statuses(path: str, method: str) -> set[str]:
    text = API_REFERENCE.read_text()
    section = re.search(rf"^### `{method.upper()} {re.escape(path)}`\n(.*?)(?=^### |\Z)", text, re.M | re.S).group(1)
    return set(re.findall(r"^- \*\*(\d{3})\*\*", section, re.M))


def test_healthz(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_reports_both_dependencies(client):
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json == {"database": "ok", "redis": "ok", "storage": "ok",
                                                              "breaker": "closed", "spool": 0}


def test_readyz_is_503_when_redis_is_down(app_factory):
    response = app_factory(REDIS_URL="redis://127.0.0.1:1/0").test_client().get("/readyz")
    assert response.status_code == 503 and response.json["redis"].startswith("down")


def test_metrics_speak_prometheus(client, work):
    raw, headers = text_webhook("15554440001", "I want to talk to a human")
    client.post("/webhooks/whatsapp", data=raw, headers=headers)
    work()
    text = client.get("/metrics").get_data(as_text=True)
    assert 'baton_conversations{state="PENDING_AGENT"} 1.0' in text
    assert "baton_messages_unrouted 0.0" in text


def test_metrics_can_require_a_token(app_factory):
    client = app_factory(METRICS_TOKEN="m3tr1cs").test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer m3tr1cs"}).status_code == 200


def test_openapi_serves_every_promised_route_and_answer(client):
    spec = client.get("/openapi.json").json
    for (path, method), statuses in PROMISED.items():
        assert method in spec["paths"].get(path, {}), f"{method.upper()} {path} is missing from /openapi.json"
        assert statuses <= set(spec["paths"][path][method]["responses"]), (path, method)


def test_the_reference_documents_exactly_the_served_routes(client):
    spec = client.get("/openapi.json").json
    served = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert reference_routes() == served, "docs/api.md is stale: run .venv/bin/python scripts/gen_docs.py"


@pytest.mark.parametrize("path, method", sorted(PROMISED))
def test_every_promised_route_and_answer_is_in_the_reference(path, method):
    assert (path, method) in reference_routes()
    assert PROMISED[(path, method)] <= reference_statuses(path, method)


@pytest.mark.parametrize("schema", sorted(PROMISED_FIELDS))
def test_openapi_objects_require_every_promised_field(client, schema):
    documented = client.get("/openapi.json").json["components"]["schemas"][schema]
    assert PROMISED_FIELDS[schema] <= set(documented["properties"])
    assert PROMISED_FIELDS[schema] <= set(documented.get("required", ())), "clients rely on these being present"
    assert PROMISED_FIELDS[schema] <= reference_fields(schema)


def test_the_bot_reply_body_in_openapi_matches_the_promise(client):
    spec = client.get("/openapi.json").json
    assert BOT_REPLY_FIELDS <= set(spec["components"]["schemas"]["BotReply"]["properties"])
    assert BOT_REPLY_FIELDS <= reference_fields("BotReply")


def test_unknown_routes_answer_json_404(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404 and response.json["error"] == "not_found"


def test_a_wrong_method_answers_json_405(client):
    response = client.delete("/webhooks/whatsapp")
    assert response.status_code == 405 and response.json["error"] == "method_not_allowed"


@pytest.mark.parametrize("variable, value", [("OFFER_TIMEOUT", "soon"), ("WHATSAPP_PROVIDER", "telegram"),
                                             ("PENDING_TIMEOUT_POLICY", "panic"), ("DATABASE_URL", "mysql://x"),
                                             ("BOT_HISTORY", "0"), ("TESTING", "maybe")])
def test_a_bad_setting_stops_start_up_naming_the_variable(variable, value):
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ={"WHATSAPP_APP_SECRET": "s", variable: value})


def test_cloud_api_without_its_secrets_names_the_missing_one():
    with pytest.raises(ConfigError, match="WHATSAPP_ACCESS_TOKEN"):
        load_settings(environ={"WHATSAPP_PROVIDER": "cloud_api", "WHATSAPP_APP_SECRET": "s",
                               "WHATSAPP_VERIFY_TOKEN": "v"})


def test_a_worker_process_runs_a_thread_per_lane_pump_plus_timers_and_media_unless_told():
    from config import validate_for_worker, worker_threads

    def settings(**environ):
        return load_settings(environ={"WHATSAPP_APP_SECRET": "s", **environ})

    assert worker_threads(settings()) == 5
    assert worker_threads(settings(PUMP_CONCURRENCY="2")) == 8
    assert worker_threads(settings(WORKER_THREADS="3", PUMP_CONCURRENCY="2")) == 3
    with pytest.raises(ConfigError, match="WORKER_THREADS must not be negative"):
        settings(WORKER_THREADS="-1")
    # Each thread keeps a PostgreSQL connection: the worker refuses to start with fewer in its pool.
    on_postgres = {"DATABASE_URL": "postgresql://baton@localhost/baton", "DATABASE_POOL_SIZE": "4"}
    validate_for_worker(settings(**on_postgres, WORKER_THREADS="4"))
    with pytest.raises(ConfigError, match="WORKER_THREADS: 5 worker threads .* DATABASE_POOL_SIZE \\(4\\)"):
        validate_for_worker(settings(**on_postgres))
    validate_for_worker(settings(DATABASE_POOL_SIZE="4"))      # SQLite: no pool


def test_init_db_is_safe_to_rerun(runner):
    first = runner.invoke(args=["baton", "init-db"])
    again = runner.invoke(args=["baton", "init-db"])
    assert first.exit_code == again.exit_code == 0
    assert "schema is up to date" in again.output


def test_token_add_prints_the_secret_alone_on_the_last_line_and_stores_only_its_hash(runner):
    result = runner.invoke(args=["baton", "token", "add", "--role", "bot", "--name", "n8n"])
    assert result.exit_code == 0
    secret = result.output.strip().splitlines()[-1]
    assert secret.startswith("bt_") and " " not in secret
    row = ApiToken.get(ApiToken.name == "n8n")
    assert row.role == "bot" and secret not in row.token_hash


def test_token_add_refuses_an_unknown_role(runner):
    result = runner.invoke(args=["baton", "token", "add", "--role", "god", "--name", "x"])
    assert result.exit_code != 0 and ApiToken.select().count() == 0


def test_outbox_shows_what_the_sandbox_sent(runner, client, work):
    raw, headers = text_webhook("15554440002", "hi")
    client.post("/webhooks/whatsapp", data=raw, headers=headers)
    work()
    result = runner.invoke(args=["baton", "outbox"])
    assert "to 15554440002" in result.output and "How can I help" in result.output


def test_the_admin_outbox_endpoint_lists_the_same(client, work, admin_token):
    raw, headers = text_webhook("15554440003", "hi")
    client.post("/webhooks/whatsapp", data=raw, headers=headers)
    work()
    items = client.get("/api/v1/admin/outbox", headers={"Authorization": f"Bearer {admin_token}"}).json["items"]
    assert [i["to"] for i in items] == ["15554440003"] == [e.to for e in OutboxEntry.select()]


def test_the_outbox_is_for_admins_only(client, bot_token):
    assert client.get("/api/v1/admin/outbox", headers={"Authorization": f"Bearer {bot_token}"}).status_code == 403


def test_a_worker_on_the_media_queue_alone_leaves_the_lanes_jobs_to_the_other_workers(runner, rt):
    """`baton worker --queue media` (bench/media.py: media downloads off the lanes' workers);
    without --queue a worker still takes every queue."""
    from rq.job import JobStatus

    media_job = rt.queues["media"].enqueue("jobs.media.fetch_media", "md_nothing_pending")
    lane_job = rt.queues["inbound"].enqueue("jobs.media.fetch_media", "md_nothing_pending_either")
    result = runner.invoke(args=["baton", "worker", "--burst", "--queue", "media"])
    assert result.exit_code == 0, result.output
    assert media_job.get_status(refresh=True) == JobStatus.FINISHED
    assert media_job.return_value() == "not_pending"
    assert lane_job.get_status(refresh=True) == JobStatus.QUEUED

    result = runner.invoke(args=["baton", "worker", "--burst"])
    assert result.exit_code == 0, result.output
    assert lane_job.get_status(refresh=True) == JobStatus.FINISHED


def test_a_worker_refuses_a_queue_baton_does_not_have(runner):
    result = runner.invoke(args=["baton", "worker", "--burst", "--queue", "nosuch"])
    assert result.exit_code != 0 and "nosuch" in result.output
