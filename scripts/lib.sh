# Shared by run.sh and test.sh: install what is missing, start what is down.
# shellcheck shell=bash

say() { printf '\033[1m[baton]\033[0m %s\n' "$*"; }

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {
  # apt_install <binary-to-check> <package...>
  local binary=$1; shift
  command -v "$binary" >/dev/null 2>&1 && return 0
  if can_apt; then
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    }
  else
    say "missing: $binary. Install the package(s) '$*' (e.g. sudo apt-get install $*) and run again."
    exit 1
  fi
}

ensure_python_env() {
  # ensure_python_env <requirements file>: a .venv with exactly those pins.
  local requirements=$1
  local python=${PYTHON:-python3}
  command -v "$python" >/dev/null 2>&1 || apt_install python3 python3 python3-venv
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    "$python" -m venv .venv || { apt_install python3 python3-venv; "$python" -m venv .venv; }
  fi
  local stamp=.venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$requirements")
  if [ ! -f "$stamp" ]; then
    say "installing Python packages from $requirements"
    .venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
    touch "$stamp"
  fi
  export PATH="$PWD/.venv/bin:$PATH"
}

redis_answers() {
  # redis_answers <redis url>
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
}

ensure_redis() {
  # ensure_redis <redis url> <data dir>: start redis-server when nothing answers.
  local url=$1 dir=$2
  redis_answers "$url" && return 0
  local hostport=${url#*://}; hostport=${hostport%%/*}; hostport=${hostport##*@}
  local host=${hostport%%:*} port=${hostport##*:}
  [ "$port" = "$hostport" ] && port=6379
  case "$host" in 127.0.0.1|localhost|::1) ;; *) say "Redis at $url does not answer"; exit 1;; esac
  apt_install redis-server redis-server
  mkdir -p "$dir"
  say "starting redis-server on $host:$port (data in $dir)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$PWD/$dir" \
    --appendonly yes --save 60 1 --logfile "$PWD/$dir/redis.log" >/dev/null
  for _ in $(seq 50); do redis_answers "$url" && return 0; sleep 0.1; done
  say "redis-server did not start; see $dir/redis.log"; exit 1
}

# Real n8n for tests/test_n8n_real.py and bench/n8n_router.py: n8n 2.8.4, the
# newest release whose engines accept Node 20, installed from npm into a cache
# outside the repository (2.3 GB; reused by later runs). Two overrides: n8n <= 2.8
# asks for xlsx from a CDN, and linkedom 0.18.15 needs a package npm lacks.
N8N_VERSION=${N8N_VERSION:-2.8.4}
N8N_HOME=${BATON_N8N_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/baton/n8n-$N8N_VERSION}
ensure_n8n() {
  # ensure_n8n: sets BATON_N8N_BIN when n8n is (or gets) installed; returns 1 when npm cannot install it.
  if [ ! -x "$N8N_HOME/node_modules/.bin/n8n" ] || [ ! -f "$N8N_HOME/.installed" ]; then
    command -v npm >/dev/null 2>&1 || apt_install npm nodejs npm || return 1
    say "installing n8n $N8N_VERSION from npm into $N8N_HOME (once; about 4 minutes)"
    mkdir -p "$N8N_HOME"
    cat > "$N8N_HOME/package.json" <<JSON
{"name": "baton-n8n", "private": true,
 "dependencies": {"n8n": "$N8N_VERSION"},
 "overrides": {"xlsx": "0.18.5", "linkedom": "0.18.14"}}
JSON
    (cd "$N8N_HOME" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error >npm-install.log 2>&1 \
      && npm rebuild sqlite3 >>npm-install.log 2>&1) || { say "n8n could not be installed (see $N8N_HOME/npm-install.log)"; return 1; }
    touch "$N8N_HOME/.installed"
  fi
  export BATON_N8N_BIN="$N8N_HOME/node_modules/.bin/n8n"
}
