#!/usr/bin/env bash
# Run Baton with embedded defaults: SQLite under instance/, a local Redis,
# the sandbox WhatsApp provider and the built-in bot. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/lib.sh

ensure_python_env requirements.txt
mkdir -p instance
rand() { .venv/bin/python -c 'import secrets; print(secrets.token_hex(24))'; }
if [ ! -f .env ]; then
  say "writing .env with fresh secrets (edit it to switch provider, database, n8n URLs…)"
  cat > .env <<ENV
WHATSAPP_PROVIDER=sandbox
WHATSAPP_APP_SECRET=$(rand)
WHATSAPP_VERIFY_TOKEN=$(rand)
BATON_EVENT_SECRET=$(rand)
SECRET_KEY=$(rand)
ENV
elif ! grep -q '^SECRET_KEY=.' .env; then
  say "adding a SECRET_KEY to .env (it signs media links)"
  echo "SECRET_KEY=$(rand)" >> .env
fi
set -a; . ./.env; set +a
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export BATON_BIND=${BATON_BIND:-127.0.0.1:8000}
export PUBLIC_BASE_URL=${PUBLIC_BASE_URL:-http://$BATON_BIND}
export FLASK_APP=app

ensure_redis "$REDIS_URL" instance/redis
flask baton init-db
token=$(flask baton token add --role admin --name "admin-$(date -u +%Y%m%dT%H%M%S)" | tail -n 1)

cat <<BANNER

  Baton is starting.
    API            $PUBLIC_BASE_URL/api/v1   (OpenAPI: $PUBLIC_BASE_URL/openapi.json)
    Webhook        $PUBLIC_BASE_URL/webhooks/whatsapp   (provider: ${WHATSAPP_PROVIDER})
    Admin token    $token
  Try it (another terminal, in this folder):
    .venv/bin/flask --app app baton simulate --from 15551234567 --text "hi"
    .venv/bin/flask --app app baton simulate --from 15551234567 --text "I want to talk to a human"
    .venv/bin/flask --app app baton outbox

BANNER
exec honcho start -f Procfile -c "worker=${BATON_WORKERS:-2}"
