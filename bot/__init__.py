"""Baton's built-in bot, used when no n8n bot URL is configured."""
