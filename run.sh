#!/usr/bin/env bash
# Run Baton with embedded defaults: SQLite under instance/, a local Redis,
# the sandbox WhatsApp provider and the built-in bot. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/lib.sh

new_admin_token=0
for arg in "$@"; do
  case "$arg" in
    --new-admin-token) new_admin_token=1 ;;
    -h|--help) echo "usage: ./run.sh [--new-admin-token]  (an admin token is created on the first run, or when asked)"; exit 0 ;;
    *) say "unknown option: $arg (see ./run.sh --help)"; exit 2 ;;
  esac
done

ensure_python_env requirements.txt
mkdir -p instance
rand() { .venv/bin/python -c 'import secrets; print(secrets.token_hex(24))'; }
if [ ! -f .env ]; then
  say "writing .env with fresh secrets (edit it to switch provider, database, n8n URLs…)"
  ( umask 077; : > .env )      # readable by its owner only, from the first byte
  cat >> .env <<ENV
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
chmod 600 .env      # it holds every secret; an older run.sh wrote it readable by all
set -a; . ./.env; set +a
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export BATON_BIND=${BATON_BIND:-127.0.0.1:8000}
export PUBLIC_BASE_URL=${PUBLIC_BASE_URL:-http://$BATON_BIND}
export FLASK_APP=app

ensure_redis "$REDIS_URL" instance/redis
flask baton init-db
# An admin token only on the first run (no admin token exists yet) or when asked:
# every start printing a fresh one would pile up live admin credentials.
if [ "$new_admin_token" = 1 ] || [ "$(flask baton token count --role admin)" = 0 ]; then
  token=$(flask baton token add --role admin --name "admin-$(date -u +%Y%m%dT%H%M%S)" | tail -n 1)
  token_line="Admin token    $token   (shown once: store it now)"
else
  token_line="Admin token    the one printed on the first run (./run.sh --new-admin-token makes another;
                   flask --app app baton token list / token revoke ID manage them)"
fi

cat <<BANNER

  Baton is starting.
    API            $PUBLIC_BASE_URL/api/v1   (OpenAPI: $PUBLIC_BASE_URL/openapi.json)
    Webhook        $PUBLIC_BASE_URL/webhooks/whatsapp   (provider: ${WHATSAPP_PROVIDER})
    $token_line
  Try it (another terminal, in this folder):
    .venv/bin/flask --app app baton simulate --from 15551234567 --text "hi"
    .venv/bin/flask --app app baton simulate --from 15551234567 --text "I want to talk to a human"
    .venv/bin/flask --app app baton outbox

BANNER
# Each worker process runs WORKER_THREADS RQ workers (threads: every lane's pump at once), so one
# is enough for the lanes; a second one uses the second core and keeps the lanes going while
# the other restarts.
exec honcho start -f Procfile -c "worker=${BATON_WORKERS:-2}"
