#!/usr/bin/env bash
# Install what the tests need and run the whole suite twice: on SQLite in a copy
# of this repository with nothing beside it (proving Baton stands alone: no
# ../shared), then on PostgreSQL here (where the ../shared corpus, when
# present, is an extra check).
# ./test.sh --quick: everything but the real-process and browser stories, on SQLite only.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/lib.sh

apt_install redis-server redis-server
apt_install chromium chromium chromium-driver   # the console's browser tests (tests/test_console.py)
ensure_python_env requirements-dev.txt

if [[ "${1:-}" == "--quick" ]]; then
  shift
  say "quick run on SQLite: no real-process or browser stories, on every core (pytest-xdist)"
  BATON_TEST_DATABASE=sqlite exec .venv/bin/python -m pytest -q -m "not processes and not browser" \
    -n "${BATON_TEST_WORKERS:-auto}" "$@"
fi

# PostgreSQL: use the one answering on 127.0.0.1:5432, start an installed
# cluster, or install one. Tests create (and drop) a database of their own.
pg_answers() { .venv/bin/python -c "import psycopg2; psycopg2.connect('${BATON_TEST_PG:-postgresql://postgres@127.0.0.1:5432/postgres}', connect_timeout=2).close()" >/dev/null 2>&1; }
if ! pg_answers; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install psql postgresql; fi
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    say "starting PostgreSQL"
    for v in $(ls /etc/postgresql); do pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
    for _ in $(seq 50); do pg_answers && break; sleep 0.2; done
  fi
  pg_answers || { say "PostgreSQL does not answer at 127.0.0.1:5432 (trust auth for user postgres is expected)"; exit 1; }
fi

# Real n8n for tests/test_n8n_real.py (once, into a cache outside the repository).
# When npm cannot install it, ensure_n8n says why and exports nothing: those
# tests then skip, except in CI (CI=true), where they fail.
# (apt_install exits when it cannot install, so npm is looked for first.)
if command -v npm >/dev/null 2>&1 || can_apt; then
  ensure_n8n || say "the real-n8n tests will be skipped (CI=true makes them fail)"
else
  say "npm is missing (apt-get install npm): the real-n8n tests will be skipped (CI=true makes them fail)"
fi

alone=$(mktemp -d)
trap 'rm -rf "$alone"' EXIT
tar --exclude=./.venv --exclude=./.git --exclude=./.env --exclude=./instance --exclude=./bench/results --exclude='*/__pycache__' -cf - . \
  | tar -xf - -C "$alone" --one-top-level=baton
ln -s "$PWD/.venv" "$alone/baton/.venv"
say "test suite on SQLite, in a copy of the repository with nothing beside it ($alone/baton)"
(cd "$alone/baton" && BATON_TEST_DATABASE=sqlite .venv/bin/python -m pytest -q -p no:cacheprovider "$@")
say "test suite on PostgreSQL"
BATON_TEST_DATABASE=postgres .venv/bin/python -m pytest -q "$@"
