"""Peewee models, one module per entity. `ALL_MODELS` is the schema."""
from .base import db, bind, new_id, utcnow, isoformat, write_transaction, execute_write  # noqa: F401
from .channel import Channel
from .contact import Contact
from .conversation import (Conversation, BOT_CONTROLLED, PENDING_AGENT, AGENT_CONTROLLED,  # noqa: F401
                           CLOSED, STATES)
from .message import Message
from .event import Event
from .bot_turn import BotTurn
from .delivery import Delivery
from .outbox import OutboxEntry
from .token import ApiToken
from .unsupported_update import UnsupportedUpdate
from .agent import Agent
from .callback_request import CallbackRequest
from .media import Media
from .dead_letter import DeadLetter

ALL_MODELS = [Channel, Contact, Conversation, Message, Event, BotTurn, Delivery, OutboxEntry,
              ApiToken, UnsupportedUpdate, Agent, CallbackRequest, Media,
              DeadLetter]
