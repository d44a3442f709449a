"""The n8n-only router that bench/n8n_router.py measures against Baton: built the
way the public n8n "WhatsApp bot with human handoff" templates do it —
Webhook → extract the message → look the conversation up in a store (Redis) →
IF (a person holds it, or the customer asks for one) → record the route → answer.

There is no de-duplication, no ordering and no lock: each execution sees the
store as it finds it. That is the point of the comparison.

    python bench/n8n_router_workflow.py > router.json     # to import it by hand
"""
from __future__ import annotations

import json
import uuid

WEBHOOK_PATH = "baton-bench-route"
REDIS_CREDENTIAL = {"id": "BENCH_REDIS", "name": "Bench Redis"}
# The customer's words that ask for a person (Baton's list has the same phrase).
ESCALATION_REGEX = r"\b(to a human|speak to an agent|talk to a person)\b"

_MESSAGE = "$('Extract message').item.json"


def _id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"baton-bench-router/{name}"))


def _node(name: str, node_type: str, version: float, x: int, y: int, parameters: dict, **extra) -> dict:
    node = {"parameters": parameters, "id": _id(name), "name": name, "type": node_type,
            "typeVersion": version, "position": [x, y]}
    node.update(extra)
    return node


def _redis(name: str, x: int, y: int, **parameters) -> dict:
    return _node(name, "n8n-nodes-base.redis", 1, x, y, parameters,
                 credentials={"redis": REDIS_CREDENTIAL})


def _respond(name: str, route: str, x: int, y: int) -> dict:
    return _node(name, "n8n-nodes-base.respondToWebhook", 1.5, x, y,
                 {"respondWith": "json", "responseBody": json.dumps({"route": route}), "options": {}})


def _link(*names: str) -> dict:
    return {"main": [[{"node": name, "type": "main", "index": 0}] for name in names]}


def workflow() -> dict:
    value = "$json.body.entry[0].changes[0].value"
    assignments = [
        {"id": _id("a-wa"), "name": "wa_id", "type": "string", "value": f"={{{{ {value}.messages[0].from }}}}"},
        {"id": _id("a-id"), "name": "message_id", "type": "string", "value": f"={{{{ {value}.messages[0].id }}}}"},
        {"id": _id("a-text"), "name": "text", "type": "string",
         "value": f"={{{{ {value}.messages[0].text.body }}}}"},
    ]
    condition_options = {"caseSensitive": False, "leftValue": "", "typeValidation": "loose", "version": 3}
    nodes = [
        _node("Receive message", "n8n-nodes-base.webhook", 2.1, 0, 300,
              {"httpMethod": "POST", "path": WEBHOOK_PATH, "responseMode": "responseNode", "options": {}},
              webhookId=_id("webhook")),
        _node("Extract message", "n8n-nodes-base.set", 3.4, 220, 300,
              {"assignments": {"assignments": assignments}, "options": {}}),
        _redis("Look up conversation", 440, 300, operation="get", key=f"=state:{{{{ {_MESSAGE}.wa_id }}}}",
               propertyName="state", keyType="string", options={}),
        _node("Human or asks for one?", "n8n-nodes-base.if", 2.3, 660, 300, {
            "conditions": {"options": condition_options, "combinator": "or", "conditions": [
                {"id": _id("c-human"), "leftValue": "={{ $json.state }}", "rightValue": "human",
                 "operator": {"type": "string", "operation": "equals"}},
                {"id": _id("c-asks"), "leftValue": f"={{{{ {_MESSAGE}.text }}}}", "rightValue": ESCALATION_REGEX,
                 "operator": {"type": "string", "operation": "regex"}},
            ]},
            "looseTypeValidation": True, "options": {"ignoreCase": True}}),
        _redis("Hand to a person", 880, 200, operation="set", key=f"=state:{{{{ {_MESSAGE}.wa_id }}}}",
               value="human", keyType="string", expire=False),
        _redis("Record agent route", 1100, 200, operation="push", list="routed",
               messageData=f"={{{{ {_MESSAGE}.message_id }}}} agent", tail=True),
        _respond("Answer agent", "agent", 1320, 200),
        _redis("Record bot route", 880, 420, operation="push", list="routed",
               messageData=f"={{{{ {_MESSAGE}.message_id }}}} bot", tail=True),
        _respond("Answer bot", "bot", 1100, 420),
    ]
    connections = {
        "Receive message": _link("Extract message"),
        "Extract message": _link("Look up conversation"),
        "Look up conversation": _link("Human or asks for one?"),
        "Human or asks for one?": {"main": [[{"node": "Hand to a person", "type": "main", "index": 0}],
                                           [{"node": "Record bot route", "type": "main", "index": 0}]]},
        "Hand to a person": _link("Record agent route"),
        "Record agent route": _link("Answer agent"),
        "Record bot route": _link("Answer bot"),
    }
    return {"id": "BatonBenchRouter1", "name": "Bench: n8n-only handoff router", "nodes": nodes,
            "connections": connections, "settings": {"executionOrder": "v1", "saveDataSuccessExecution": "none",
                                                     "saveDataErrorExecution": "all",
                                                     "saveManualExecutions": False},
            "pinData": {}, "active": False}


def credentials(redis_host: str, redis_port: int) -> list[dict]:
    return [{**REDIS_CREDENTIAL, "type": "redis",
             "data": {"host": redis_host, "port": redis_port, "database": 0, "password": "", "ssl": False}}]


if __name__ == "__main__":
    print(json.dumps(workflow(), indent=1))
