"""The exported n8n workflows are data users import as-is: check that n8n 2.x
(both 2.8.4 and 2.41.1) can load them and that they keep Baton's contract."""
import json
import re
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "n8n_workflows"
CONTRACT = ROOT.parent / "shared" / "CONTRACT.md"

AI_BRANCH = "baton_ai_branch.json"
NOTIFY_BRANCH = "baton_notify_branch.json"
FILES = (AI_BRANCH, NOTIFY_BRANCH)
WEBHOOK_PATHS = {AI_BRANCH: "baton-bot", NOTIFY_BRANCH: "baton-notify"}

# Highest typeVersion that both n8n 2.8.4 and 2.41.1 accept (N8N.md, and the node
# packages of both versions for crypto, code, noOp and stopAndError).
MAX_TYPE_VERSIONS = {
    "n8n-nodes-base.webhook": 2.1,
    "n8n-nodes-base.respondToWebhook": 1.5,
    "n8n-nodes-base.httpRequest": 4.4,
    "n8n-nodes-base.if": 2.3,
    "n8n-nodes-base.switch": 3.4,
    "n8n-nodes-base.set": 3.4,
    "n8n-nodes-base.code": 2,
    "n8n-nodes-base.crypto": 2,
    "n8n-nodes-base.noOp": 1,
    "n8n-nodes-base.stopAndError": 1,
    "n8n-nodes-base.slack": 2.4,
    "n8n-nodes-base.emailSend": 2.1,
    "n8n-nodes-base.telegram": 1.2,
    "@n8n/n8n-nodes-langchain.agent": 3.1,
    "@n8n/n8n-nodes-langchain.lmChatOpenAi": 1.3,
    "@n8n/n8n-nodes-langchain.memoryBufferWindow": 1.3,
    "@n8n/n8n-nodes-langchain.memoryManager": 1.1,
    "n8n-nodes-base.stickyNote": 1,
}
STICKY_NOTE = "n8n-nodes-base.stickyNote"
SIGNATURE_CHECK = "Signature valid?"

# CONTRACT.md "Events out": everything except bot.turn goes to the notify branch,
# and so do Baton's `callback.requested` (routing/timeouts.py) and `message.dead_lettered`
# (routing/dead_letters.py, an alert for the admins), which came later.
NOTIFY_EVENTS = (
    "handoff.requested", "handoff.offered", "handoff.accepted", "handoff.timeout",
    "message.for_agent", "conversation.released", "conversation.closed", "callback.requested",
    "message.dead_lettered",
)
NEEDS_A_HUMAN = ("handoff.requested", "handoff.offered", "handoff.timeout", "message.for_agent",
                 "callback.requested", "message.dead_lettered")
EVENTS_AFTER_CONTRACT = {"callback.requested", "message.dead_lettered"}
# The notify branch's channels: node name -> (type, credential type, credential name).
CHANNELS = {
    "Send email": ("n8n-nodes-base.emailSend", "smtp", "Email (SMTP)"),
    "Post to Slack": ("n8n-nodes-base.httpRequest", "slackApi", "Slack"),
    "Send to Telegram": ("n8n-nodes-base.telegram", "telegramApi", "Telegram"),
}


def load(name):
    return json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))


def nodes_of_type(workflow, node_type):
    return [n for n in workflow["nodes"] if n["type"] == node_type]


def only_node(workflow, node_type):
    (found,) = nodes_of_type(workflow, node_type)
    return found


def node_named(workflow, name):
    return next(n for n in workflow["nodes"] if n["name"] == name)


def after_signature_check(workflow, output):
    """The node the signature check feeds on `output`: 0 valid, 1 not."""
    (following,) = targets(workflow, SIGNATURE_CHECK, output=output)
    return node_named(workflow, following)


def targets(workflow, source, output=None, kind="main"):
    """Names of nodes fed by `source` (one output index, or all of them)."""
    outputs = workflow["connections"].get(source, {}).get(kind, [])
    chosen = outputs if output is None else (outputs[output:output + 1])
    return {link["node"] for group in chosen for link in (group or [])}


def reachable(workflow, start):
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(targets(workflow, name))
    return seen


def route_event(switch, event):
    """The output index n8n's Switch (rules mode, first match) sends `event` to."""
    rules = switch["parameters"]["rules"]["values"]
    for index, rule in enumerate(rules):
        conditions = rule["conditions"]["conditions"]
        if any(c["operator"]["operation"] == "equals" and c["rightValue"] == event
               for c in conditions):
            return index
    if switch["parameters"].get("options", {}).get("fallbackOutput") == "extra":
        return len(rules)
    return None


def all_parameter_text(workflow):
    return json.dumps([n["parameters"] for n in workflow["nodes"]])


@pytest.mark.parametrize("name", FILES)
def test_workflow_has_the_import_format(name):
    workflow = load(name)
    assert ({"name", "nodes", "connections", "settings", "pinData"} <= workflow.keys()
            and workflow["settings"].get("executionOrder") == "v1")


@pytest.mark.parametrize("name", FILES)
def test_workflow_has_its_own_id(name):
    # n8n 2.41's `import:workflow --input=<file>` fails with a NOT NULL error on
    # a workflow without an id; a fixed id also makes re-importing an update.
    other = NOTIFY_BRANCH if name == AI_BRANCH else AI_BRANCH
    workflow_id = load(name)["id"]
    assert re.fullmatch(r"[A-Za-z0-9]{16}", workflow_id) and workflow_id != load(other)["id"]


@pytest.mark.parametrize("name", FILES)
def test_node_names_are_unique(name):
    names = [n["name"] for n in load(name)["nodes"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", FILES)
def test_node_ids_are_unique_uuids(name):
    ids = [n["id"] for n in load(name)["nodes"]]
    assert len(ids) == len(set(ids)) and all(str(uuid.UUID(i)) == i for i in ids)


@pytest.mark.parametrize("name", FILES)
def test_every_node_has_the_fields_n8n_needs(name):  # sticky notes too
    required = {"id", "name", "type", "typeVersion", "position", "parameters"}
    assert all(required <= n.keys() for n in load(name)["nodes"])


@pytest.mark.parametrize("name", FILES)
def test_the_crypto_node_feeds_the_signature_check(name):
    workflow = load(name)
    crypto = only_node(workflow, "n8n-nodes-base.crypto")["name"]
    assert targets(workflow, crypto) == {SIGNATURE_CHECK}


@pytest.mark.parametrize("name", FILES)
def test_connections_reference_existing_nodes(name):
    workflow = load(name)
    names = {n["name"] for n in workflow["nodes"]}
    referenced = set(workflow["connections"])
    for outputs in workflow["connections"].values():
        for groups in outputs.values():
            referenced |= {link["node"] for group in groups for link in (group or [])}
    assert referenced <= names


@pytest.mark.parametrize("name", FILES)
def test_connection_kinds_match_their_key(name):
    workflow = load(name)
    assert all(link["type"] == kind
               for outputs in workflow["connections"].values()
               for kind, groups in outputs.items()
               for group in groups for link in (group or []))


@pytest.mark.parametrize("name", FILES)
def test_node_types_are_known_to_both_n8n_versions(name):
    unknown = {n["type"] for n in load(name)["nodes"]} - MAX_TYPE_VERSIONS.keys()
    assert not unknown


@pytest.mark.parametrize("name", FILES)
def test_type_versions_are_accepted_by_both_n8n_versions(name):
    too_new = [(n["name"], n["typeVersion"]) for n in load(name)["nodes"]
               if n["typeVersion"] > MAX_TYPE_VERSIONS.get(n["type"], 0)]
    assert not too_new


@pytest.mark.parametrize("name", FILES)
def test_webhook_has_webhook_id_and_documented_path(name):
    hook = only_node(load(name), "n8n-nodes-base.webhook")
    assert (str(uuid.UUID(hook["webhookId"])) == hook["webhookId"]
            and hook["parameters"]["path"] == WEBHOOK_PATHS[name]
            and hook["parameters"]["httpMethod"] == "POST")


@pytest.mark.parametrize("name", FILES)
def test_webhook_ids_differ_between_workflows(name):
    other = NOTIFY_BRANCH if name == AI_BRANCH else AI_BRANCH
    assert (only_node(load(name), "n8n-nodes-base.webhook")["webhookId"]
            != only_node(load(other), "n8n-nodes-base.webhook")["webhookId"])


@pytest.mark.parametrize("name", FILES)
def test_every_node_is_reachable_from_the_webhook(name):
    workflow = load(name)
    hook = only_node(workflow, "n8n-nodes-base.webhook")["name"]
    sub_nodes = {source for source, outputs in workflow["connections"].items()
                 if "main" not in outputs}
    notes = {n["name"] for n in nodes_of_type(workflow, STICKY_NOTE)}
    assert reachable(workflow, hook) | sub_nodes | notes == {n["name"] for n in workflow["nodes"]}


@pytest.mark.parametrize("name", FILES)
def test_webhook_keeps_the_raw_body_for_the_signature(name):
    hook = only_node(load(name), "n8n-nodes-base.webhook")
    assert hook["parameters"]["options"].get("rawBody") is True


@pytest.mark.parametrize("name", FILES)
def test_signature_is_hmac_sha256_of_the_raw_body(name):
    crypto = only_node(load(name), "n8n-nodes-base.crypto")["parameters"]
    assert (crypto["action"], crypto["type"], crypto["binaryData"], crypto["encoding"]) == (
        "hmac", "SHA256", True, "hex")


@pytest.mark.parametrize("name", FILES)
def test_webhook_feeds_the_signature_check_first(name):
    workflow = load(name)
    hook = only_node(workflow, "n8n-nodes-base.webhook")["name"]
    crypto = only_node(workflow, "n8n-nodes-base.crypto")["name"]
    assert targets(workflow, hook) == {crypto}


@pytest.mark.parametrize("name", FILES)
def test_signature_compared_with_the_x_baton_signature_header(name):
    check = node_named(load(name), SIGNATURE_CHECK)
    assert check["type"] == "n8n-nodes-base.if"
    (condition,) = check["parameters"]["conditions"]["conditions"]
    assert ("x-baton-signature" in condition["leftValue"]
            and condition["rightValue"].startswith("=sha256=")
            and condition["operator"] == {"type": "string", "operation": "equals"})


@pytest.mark.parametrize("name", FILES)
def test_bad_signature_is_answered_401_and_goes_no_further(name):
    workflow = load(name)
    node = after_signature_check(workflow, output=1)
    assert (node["type"] == "n8n-nodes-base.respondToWebhook"
            and node["parameters"]["options"]["responseCode"] == 401
            and not targets(workflow, node["name"]))


@pytest.mark.parametrize("name", FILES)
def test_good_signature_is_acknowledged_before_the_work(name):
    node = after_signature_check(load(name), output=0)
    assert (node["type"] == "n8n-nodes-base.respondToWebhook"
            and 200 <= node["parameters"]["options"]["responseCode"] < 300)


@pytest.mark.parametrize("name", FILES)
def test_webhook_answers_through_respond_nodes(name):
    hook = only_node(load(name), "n8n-nodes-base.webhook")
    assert hook["parameters"]["responseMode"] == "responseNode"


@pytest.mark.parametrize("name", FILES)
def test_no_environment_variable_access(name):
    # n8n 2.x blocks $env by default (N8N_BLOCK_ENV_ACCESS_IN_NODE): secrets
    # come from credentials instead.
    assert "$env" not in all_parameter_text(load(name))


@pytest.mark.parametrize("name", FILES)
def test_credentials_are_referenced_by_name_with_placeholder_id(name):
    refs = [ref for n in load(name)["nodes"] for ref in n.get("credentials", {}).values()]
    assert refs and all(ref.get("id") and ref.get("name") for ref in refs)


@pytest.mark.parametrize("name", FILES)
def test_no_secret_is_written_into_parameters(name):
    text = all_parameter_text(load(name))
    assert not re.search(r"Bearer [A-Za-z0-9]|sk-[A-Za-z0-9]|xox[bp]-", text)


def test_ai_agent_uses_an_openai_compatible_chat_model():
    workflow = load(AI_BRANCH)
    model = only_node(workflow, "@n8n/n8n-nodes-langchain.lmChatOpenAi")
    agent = only_node(workflow, "@n8n/n8n-nodes-langchain.agent")
    assert targets(workflow, model["name"], kind="ai_languageModel") == {agent["name"]}


def test_openai_credential_is_named_openai():
    model = only_node(load(AI_BRANCH), "@n8n/n8n-nodes-langchain.lmChatOpenAi")
    assert model["credentials"]["openAiApi"]["name"] == "OpenAI"


def test_the_model_name_is_one_parameter_of_bot_settings():
    # The base URL lives in the credential (`url`), the model in *Bot settings*.
    workflow = load(AI_BRANCH)
    model = only_node(workflow, "@n8n/n8n-nodes-langchain.lmChatOpenAi")["parameters"]["model"]
    settings = {a["name"]: a["value"] for a in node_named(workflow, "Bot settings")["parameters"]["assignments"]["assignments"]}
    assert model["mode"] == "id" and model["value"].startswith("={{") and "http" not in json.dumps(model)
    assert settings["model"] and "vision_model" in settings
    assert "settings.model" in node_named(workflow, "Turn for the model")["parameters"]["jsCode"]


def test_the_prompts_live_only_in_bot_settings():
    workflow = load(AI_BRANCH)
    settings = {a["name"]: a["value"] for a in node_named(workflow, "Bot settings")["parameters"]["assignments"]["assignments"]}
    assert {"system_prompt", "collect_callback_prompt"} <= settings.keys()
    others = json.dumps([n["parameters"] for n in workflow["nodes"] if n["name"] != "Bot settings"])
    for prompt in (settings["system_prompt"], settings["collect_callback_prompt"]):
        assert prompt.splitlines()[0] not in others
    agent = only_node(workflow, "@n8n/n8n-nodes-langchain.agent")
    assert agent["parameters"]["options"]["systemMessage"] == "={{ $('Turn for the model').first().json.system }}"


def test_bot_settings_is_marked_for_editing():
    workflow = load(AI_BRANCH)
    notes = " ".join(n["parameters"]["content"] for n in nodes_of_type(workflow, STICKY_NOTE))
    assert "Bot settings" in notes and "Edit here" in notes and "EDIT HERE" in node_named(workflow, "Bot settings")["notes"]


def test_the_collect_callback_prompt_asks_for_name_time_and_topic():
    settings = {a["name"]: a["value"] for a in
                node_named(load(AI_BRANCH), "Bot settings")["parameters"]["assignments"]["assignments"]}
    assert all(word in settings["collect_callback_prompt"] for word in ("name", "best_time", "topic", "callback"))


def test_the_reply_format_asks_for_json_with_text_escalate_intent():
    code = node_named(load(AI_BRANCH), "Turn for the model")["parameters"]["jsCode"]
    assert all(word in code for word in ('"text"', '"escalate"', '"intent"', '"callback"', "JSON"))


def test_memory_is_seeded_per_turn_and_shared_with_the_agent():
    workflow = load(AI_BRANCH)
    memory = only_node(workflow, "@n8n/n8n-nodes-langchain.memoryBufferWindow")
    assert targets(workflow, memory["name"], kind="ai_memory") == {"Seed memory", "AI Agent"}
    assert memory["parameters"]["sessionKey"] == "={{ $('Receive bot turn').first().json.body.turn_id }}"
    seed = node_named(workflow, "Seed memory")["parameters"]
    assert (seed["mode"], seed["insertMode"]) == ("insert", "insert")


def test_the_new_message_is_left_out_of_the_seeded_history():
    code = node_named(load(AI_BRANCH), "Turn for the model")["parameters"]["jsCode"]
    assert ".filter((m) => m.id !== message.id)" in code and "const prompt = shown(message)" in code


def test_agent_prompt_comes_from_the_turn():
    agent = only_node(load(AI_BRANCH), "@n8n/n8n-nodes-langchain.agent")
    assert (agent["parameters"]["promptType"], agent["parameters"]["text"]) == (
        "define", "={{ $('Turn for the model').first().json.prompt }}")


def test_agent_runs_only_after_baton_got_its_answer():
    workflow = load(AI_BRANCH)
    agent = only_node(workflow, "@n8n/n8n-nodes-langchain.agent")["name"]
    accepted = after_signature_check(workflow, output=0)["name"]
    assert agent in reachable(workflow, accepted)


def test_only_bot_turns_reach_the_model():
    workflow = load(AI_BRANCH)
    check = node_named(workflow, "Is it a bot turn?")
    (condition,) = check["parameters"]["conditions"]["conditions"]
    assert (condition["leftValue"], condition["rightValue"]) == (
        "={{ $('Receive bot turn').first().json.body.event }}", "bot.turn")
    (ignored,) = targets(workflow, check["name"], output=1)
    assert node_named(workflow, ignored)["type"] == "n8n-nodes-base.noOp" and not targets(workflow, ignored)


def test_an_image_is_downloaded_for_the_agent_only_with_a_vision_model():
    workflow = load(AI_BRANCH)
    agent = only_node(workflow, "@n8n/n8n-nodes-langchain.agent")
    download = node_named(workflow, "Download image")
    assert targets(workflow, "Image for the model?", output=0) == {"Download image"}
    assert targets(workflow, "Image for the model?", output=1) == {agent["name"]}
    assert targets(workflow, "Download image") == {agent["name"]}
    assert agent["parameters"]["options"]["passthroughBinaryImages"] is True
    assert download["parameters"]["options"]["response"]["response"]["responseFormat"] == "file"
    assert download["credentials"]["httpHeaderAuth"]["name"] == "Baton bot token"
    code = node_named(workflow, "Turn for the model")["parameters"]["jsCode"]
    assert "visionModel && message.type === 'image'" in code


def test_a_model_error_posts_an_explicit_escalation():
    workflow = load(AI_BRANCH)
    agent = only_node(workflow, "@n8n/n8n-nodes-langchain.agent")
    assert agent["onError"] == "continueErrorOutput"
    (failed,) = targets(workflow, agent["name"], output=1)
    code = node_named(workflow, failed)["parameters"]["jsCode"]
    assert "escalate: true, reason: 'bot'" in code
    assert targets(workflow, failed) == {"Post reply to Baton"}


def post_reply():
    return node_named(load(AI_BRANCH), "Post reply to Baton")


def test_reply_is_posted_to_the_events_reply_url():
    http = post_reply()["parameters"]
    assert http["method"] == "POST" and "reply_url" in http["url"] and http["url"].startswith("={{")


def test_reply_body_quotes_conversation_and_turn_from_the_event():
    body = post_reply()["parameters"]["jsonBody"]
    assert ("conversation_id: $('Receive bot turn').first().json.body.conversation.id" in body
            and "turn_id: $('Receive bot turn').first().json.body.turn_id" in body)


@pytest.mark.parametrize("field", ["text", "escalate", "intent", "reason", "language", "metadata"])
def test_reply_body_carries_the_shaped_answer(field):
    assert f"{field}: $json.{field}" in post_reply()["parameters"]["jsonBody"]


def test_reply_is_sent_with_the_bot_token_credential():
    http = post_reply()
    assert (http["parameters"]["authentication"], http["parameters"]["genericAuthType"],
            http["credentials"]["httpHeaderAuth"]["name"]) == (
        "genericCredentialType", "httpHeaderAuth", "Baton bot token")


def test_reply_carries_an_idempotency_key_per_turn():
    # A retried reply that Baton did take the first time is not sent twice.
    (header,) = post_reply()["parameters"]["headerParameters"]["parameters"]
    assert header == {"name": "Idempotency-Key",
                      "value": "=bot-reply-{{ $('Receive bot turn').first().json.body.turn_id }}"}


def test_a_failed_reply_is_retried_by_the_node_at_most_three_times():
    http = post_reply()
    assert http["retryOnFail"] is True and 1 < http["maxTries"] <= 3 and http["onError"] == "continueErrorOutput"
    assert "neverError" not in json.dumps(http["parameters"]["options"])


def test_stale_turn_409_ends_the_run_quietly():
    workflow = load(AI_BRANCH)
    (switch,) = targets(workflow, "Post reply to Baton", output=1)
    rules = node_named(workflow, switch)["parameters"]["rules"]["values"]
    index = next(i for i, rule in enumerate(rules) if rule["conditions"]["conditions"][0]["rightValue"] == 409)
    (stale,) = targets(workflow, switch, output=index)
    assert node_named(workflow, stale)["type"] == "n8n-nodes-base.noOp"


def test_other_refusals_fail_the_run_visibly():
    workflow = load(AI_BRANCH)
    (switch,) = targets(workflow, "Post reply to Baton", output=1)
    fallback = len(node_named(workflow, switch)["parameters"]["rules"]["values"])
    (refused,) = targets(workflow, switch, output=fallback)
    assert node_named(workflow, refused)["type"] == "n8n-nodes-base.stopAndError"


def test_an_accepted_reply_ends_the_run():
    workflow = load(AI_BRANCH)
    (accepted,) = targets(workflow, "Post reply to Baton", output=0)
    assert node_named(workflow, accepted)["type"] == "n8n-nodes-base.noOp"


@pytest.mark.parametrize("event", NOTIFY_EVENTS)
def test_notify_branch_routes_event_to_a_connected_output(event):
    workflow = load(NOTIFY_BRANCH)
    (switch,) = nodes_of_type(workflow, "n8n-nodes-base.switch")
    index = route_event(switch, event)
    assert index is not None and targets(workflow, switch["name"], output=index)


@pytest.mark.parametrize("event", NOTIFY_EVENTS)
def test_notify_branch_names_every_event_in_a_rule(event):
    # Falling through to the "unknown event" output would hide a renamed event.
    (switch,) = nodes_of_type(load(NOTIFY_BRANCH), "n8n-nodes-base.switch")
    assert route_event(switch, event) < len(switch["parameters"]["rules"]["values"])


def channel_chain(workflow):
    """The nodes an event that needs a person runs through, in order, from the Switch on."""
    (switch,) = nodes_of_type(workflow, "n8n-nodes-base.switch")
    chain, todo = [], targets(workflow, switch["name"], output=route_event(switch, "handoff.requested"))
    while todo:
        (name,) = todo
        chain.append(name)
        todo = targets(workflow, name)
    return chain


@pytest.mark.parametrize("event", NEEDS_A_HUMAN)
def test_events_needing_a_person_go_to_every_channel(event):
    workflow = load(NOTIFY_BRANCH)
    (switch,) = nodes_of_type(workflow, "n8n-nodes-base.switch")
    fed = targets(workflow, switch["name"], output=route_event(switch, event))
    assert fed == {channel_chain(workflow)[0]} and set(CHANNELS) <= set(channel_chain(workflow))


def test_channels_run_one_after_another_then_are_checked():
    # One channel failing (or switched off) must not stop the others; the check
    # at the end fails the execution when a channel failed for another reason.
    workflow = load(NOTIFY_BRANCH)
    chain = channel_chain(workflow)
    (last,) = [n for n in chain if not targets(workflow, n)]
    assert (chain[-1] == last == "Check channels"
            and node_named(workflow, last)["type"] == "n8n-nodes-base.code"
            and "throw new Error" in node_named(workflow, last)["parameters"]["jsCode"]
            and all(chain.index(name) < chain.index(last) for name in CHANNELS))


@pytest.mark.parametrize("name", CHANNELS)
def test_each_channel_is_turned_on_by_its_credential(name):
    node_type, credential_type, credential_name = CHANNELS[name]
    node = node_named(load(NOTIFY_BRANCH), name)
    assert (node["type"], node["credentials"][credential_type]["name"], node.get("onError")) == (
        node_type, credential_name, "continueRegularOutput")


@pytest.mark.parametrize("name", CHANNELS)
def test_check_channels_reads_every_channel(name):
    code = node_named(load(NOTIFY_BRANCH), "Check channels")["parameters"]["jsCode"]
    assert f"'{name}'" in code


def test_slack_goes_through_the_web_api_at_a_configurable_base():
    # The Slack node is fixed to slack.com; an HTTP Request with the Slack API
    # credential speaks the same chat.postMessage to whatever base is set.
    workflow = load(NOTIFY_BRANCH)
    slack = node_named(workflow, "Post to Slack")["parameters"]
    settings = {a["name"]: a["value"] for a in
                node_named(workflow, "Notify settings")["parameters"]["assignments"]["assignments"]}
    assert (slack["method"], slack["authentication"], slack["nodeCredentialType"]) == (
        "POST", "predefinedCredentialType", "slackApi")
    assert slack["url"].endswith(".slack_api_url }}/chat.postMessage")
    assert settings["slack_api_url"] == "https://slack.com/api" and settings["slack_channel"] == "#support"


def test_no_n8n_attribution_is_appended():
    workflow = load(NOTIFY_BRANCH)
    assert node_named(workflow, "Send email")["parameters"]["options"]["appendAttribution"] is False
    assert node_named(workflow, "Send to Telegram")["parameters"]["additionalFields"]["appendAttribution"] is False


@pytest.mark.parametrize("field", ["contact.name", "contact.wa_id", "event.reason", "escalation.urgency",
                                   "pending_since", "waiting_since", "event.console_url"])
def test_message_says_who_why_how_urgent_since_when_and_links_the_console(field):
    code = node_named(load(NOTIFY_BRANCH), "Compose message")["parameters"]["jsCode"]
    assert field in code


def test_every_channel_sends_the_composed_message():
    workflow = load(NOTIFY_BRANCH)
    texts = [node_named(workflow, "Send email")["parameters"]["text"],
             node_named(workflow, "Send email")["parameters"]["html"],
             node_named(workflow, "Post to Slack")["parameters"]["jsonBody"],
             node_named(workflow, "Send to Telegram")["parameters"]["text"]]
    assert all("$('Compose message').first().json." in text for text in texts)


def test_a_sticky_note_says_how_to_turn_each_channel_on():
    notes = " ".join(n["parameters"]["content"] for n in nodes_of_type(load(NOTIFY_BRANCH), STICKY_NOTE))
    assert all(f"`{credential_name}`" in notes for _, _, credential_name in CHANNELS.values())


def test_notify_switch_reads_the_event_field():
    (switch,) = nodes_of_type(load(NOTIFY_BRANCH), "n8n-nodes-base.switch")
    lefts = {c["leftValue"] for rule in switch["parameters"]["rules"]["values"]
             for c in rule["conditions"]["conditions"]}
    assert lefts == {"={{ $json.body.event }}"}


def test_unknown_events_are_ignored_not_failed():
    workflow = load(NOTIFY_BRANCH)
    (switch,) = nodes_of_type(workflow, "n8n-nodes-base.switch")
    fed = targets(workflow, switch["name"], output=route_event(switch, "future.event"))
    assert {n["type"] for n in workflow["nodes"] if n["name"] in fed} == {"n8n-nodes-base.noOp"}


@pytest.mark.skipif(not CONTRACT.exists(), reason="shared/CONTRACT.md is not beside the repo")
def test_event_list_matches_contract():
    section = CONTRACT.read_text(encoding="utf-8").split("## Events out", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    events = {e for cell in first_cells for e in re.findall(r"`([a-z_]+\.[a-z_]+)`", cell)}
    assert events - {"bot.turn"} == set(NOTIFY_EVENTS) - EVENTS_AFTER_CONTRACT
