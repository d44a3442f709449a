"""Real n8n for tests: the workflows in n8n_workflows/ imported through n8n's CLI,
published, and run by `n8n start` on 127.0.0.1, offline.

    binary = n8n_binary()                       # skips (or, with CI=true, fails) without n8n
    with RealN8n(binary, tmp_dir, credentials=[...], workflows=[AI_BRANCH, NOTIFY_BRANCH]) as n8n:
        n8n.webhook_url("baton-bot")            # N8N_BOT_URL for Baton, or POST signed events here
        n8n.wait_for_executions(workflow_id, 1) # what n8n recorded (its own SQLite database)
        n8n.node_outcome(execution_id)          # {"nodes": [...that ran], "last_node", "error"}

As pytest fixtures (this module is a plugin listed in tests/conftest.py): `real_n8n`, one
n8n for the whole session, started at first use with both workflows and the credentials of
`n8n_credentials`; `live_n8n`, the same with `seen` set to the executions before the test
(`new_executions(live_n8n, workflow_id, count)` waits for the test's own); `fake_model`
(session) and `model` (reset per test), the OpenAI-compatible server the `OpenAI`
credential points at. Fakes for other channels join `n8n_credentials` (session-scoped: their
URLs go into n8n's credentials once).

n8n comes from `ensure_n8n` in scripts/lib.sh (test.sh calls it): n8n 2.8.4, the newest
release that runs on Node 20, installed once into ~/.cache/baton/n8n-<version> and
named by BATON_N8N_BIN. Every RealN8n has its own N8N_USER_FOLDER (database, encryption
key, settings), its own N8N_PORT and its own task-broker port (N8N_RUNNERS_BROKER_PORT),
so two can run at once. Each CLI run boots n8n (3-20 s, by the machine's load) and
`n8n start` needs ~6 s more: start one per session and reset the fakes between tests.

`baton_credentials()` builds the credentials both workflows reference by name (see
n8n_workflows/README.md), plain text; `import:credentials` encrypts them with the
instance's N8N_ENCRYPTION_KEY.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "n8n_workflows"
AI_BRANCH = WORKFLOWS / "baton_ai_branch.json"
NOTIFY_BRANCH = WORKFLOWS / "baton_notify_branch.json"
N8N_VERSION = os.environ.get("N8N_VERSION", "2.8.4")
READY_LINE = "Editor is now accessible"
# 40 characters: long enough for a production-grade BATON_EVENT_SECRET.
EVENT_SECRET = "n8n-test-event-secret-0123456789abcdefgh"
BOT_TOKEN = "bt_n8n-test-bot-token-0123456789abcdefghijklmnop"


def default_binary() -> Path:
    """Where ensure_n8n (scripts/lib.sh) installs n8n when BATON_N8N_HOME is not set."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = Path(os.environ.get("BATON_N8N_HOME") or cache / "baton" / f"n8n-{N8N_VERSION}")
    return home / "node_modules" / ".bin" / "n8n"


def n8n_binary() -> Path:
    """The n8n to run: BATON_N8N_BIN, else ensure_n8n's default install. Without one the
    test is skipped with the reason, except in CI (CI=true), where it fails: there
    test.sh installs n8n and a missing one means that broke."""
    configured = os.environ.get("BATON_N8N_BIN")
    binary = Path(configured) if configured else default_binary()
    installed = binary.exists() and os.access(binary, os.X_OK) and (
        configured or (binary.parents[2] / ".installed").exists())
    if installed:
        return binary
    why = (f"real n8n is not installed ({binary} is missing): ./test.sh installs n8n {N8N_VERSION} with npm "
           f"(scripts/lib.sh ensure_n8n) and said why it could not; or set BATON_N8N_BIN")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why + " - in CI this suite must run", pytrace=False)
    pytest.skip(why)


def baton_credentials(openai_base_url: str, openai_api_key: str, *, bot_token: str = BOT_TOKEN,
                      event_secret: str = EVENT_SECRET, slack_token: str = "xoxb-not-used") -> list[dict]:
    """The credentials the two workflows reference, as `n8n import:credentials` takes them."""
    return [
        {"id": "OPENAI_CRED", "name": "OpenAI", "type": "openAiApi",
         "data": {"apiKey": openai_api_key, "url": openai_base_url}},
        {"id": "BATON_BOT_TOKEN_CRED", "name": "Baton bot token", "type": "httpHeaderAuth",
         "data": {"name": "Authorization", "value": f"Bearer {bot_token}"}},
        {"id": "BATON_EVENT_SECRET_CRED", "name": "Baton event secret", "type": "crypto",
         "data": {"hmacSecret": event_secret}},
        {"id": "SLACK_CRED", "name": "Slack", "type": "slackApi", "data": {"accessToken": slack_token}},
    ]


class N8nFailed(AssertionError):
    pass


class RealN8n:
    START_TIMEOUT = 180.0
    CLI_TIMEOUT = 120.0

    def __init__(self, binary: Path, workdir: Path, *, credentials: list[dict], workflows: list[Path],
                 extra_env: dict | None = None):
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.folder = self.workdir / "n8n-user"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.credentials = credentials
        self.workflows = [Path(w) for w in workflows]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "n8n.log"
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self._cli_log_lock = threading.Lock()
        self._stopped = False
        self.seen: set = set()
        self.env = {
            **os.environ,
            "N8N_USER_FOLDER": str(self.folder), "N8N_ENCRYPTION_KEY": "baton-tests-n8n-encryption-key",
            "N8N_LISTEN_ADDRESS": "127.0.0.1", "N8N_HOST": "127.0.0.1", "N8N_PORT": str(self.port),
            "N8N_RUNNERS_BROKER_PORT": str(free_port()), "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false", "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false", "N8N_SECURE_COOKIE": "false",
            "WEBHOOK_URL": f"{self.url}/", "N8N_LOG_LEVEL": "info", "N8N_LOG_OUTPUT": "console",
            "DB_TYPE": "sqlite", "EXECUTIONS_DATA_SAVE_ON_SUCCESS": "all", "EXECUTIONS_DATA_SAVE_ON_ERROR": "all",
            "NODE_ENV": "production", "NO_COLOR": "1",
            **(extra_env or {}),
        }
        for inherited in ("N8N_DISABLED_MODULES", "DB_POSTGRESDB_DATABASE", "NODE_OPTIONS"):
            if inherited not in (extra_env or {}):
                self.env.pop(inherited, None)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "RealN8n":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Import the credentials and workflows with the CLI, publish every workflow, then
        `n8n start` and wait for "Editor is now accessible" (webhooks answer from then)."""
        staged = self.workdir / "workflows"
        staged.mkdir(exist_ok=True)
        for workflow in self.workflows:
            shutil.copyfile(workflow, staged / workflow.name)
        # Every CLI run boots n8n (3-20 s on a busy machine). The first one creates the
        # database; after it the credentials and the publishing run side by side.
        self.cli("import:workflow", "--separate", f"--input={staged}")
        creds = self.workdir / "credentials.json"
        creds.write_text(json.dumps(self.credentials), encoding="utf-8")
        commands = [("import:credentials", f"--input={creds}"),
                    *[("publish:workflow", f"--id={self.workflow_id(w)}") for w in self.workflows]]
        try:
            with ThreadPoolExecutor(len(commands)) as pool:
                list(pool.map(lambda args: self.cli(*args), commands))
        finally:
            creds.unlink()
        self._log_file = open(self.log_path, "ab", buffering=0)
        atexit.register(self.stop)          # even when pytest is interrupted
        self.proc = subprocess.Popen([str(self.binary), "start"], cwd=self.workdir, env=self.env,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._ready, self.START_TIMEOUT, f"n8n to log {READY_LINE!r}", interval=0.1,
                   describe=lambda: f"n8n log:\n{self.log_tail()}")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise N8nFailed(f"n8n exited with {self.proc.returncode}\n{self.log_tail()}")
        return READY_LINE in self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        """SIGTERM n8n's process group (n8n and its task runner), SIGKILL what is left; once."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)      # the task runner goes with it
            except (ProcessLookupError, PermissionError):
                pass
        if self._log_file is not None and not self._log_file.closed:
            self._log_file.close()

    def cli(self, *args: str) -> str:
        """Run `n8n <args>` on this instance's folder and database; fail with its output."""
        started = time.monotonic()
        done = subprocess.run([str(self.binary), *args], cwd=self.workdir, env=self.env, capture_output=True,
                              text=True, timeout=self.CLI_TIMEOUT)
        with self._cli_log_lock, open(self.workdir / "cli.log", "a", encoding="utf-8") as log:
            log.write(f"$ n8n {' '.join(args)}  ({time.monotonic() - started:.1f} s, exit {done.returncode})\n"
                      f"{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            raise N8nFailed(f"n8n {' '.join(args)} exited with {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done.stdout

    # -- talking to it -----------------------------------------------------------------------
    @staticmethod
    def workflow_id(path: Path) -> str:
        return json.loads(Path(path).read_text(encoding="utf-8"))["id"]

    def webhook_url(self, path: str) -> str:
        return f"{self.url}/webhook/{path}"

    def log_tail(self, max_chars: int = 8000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return text if len(text) <= max_chars else "…" + text[-max_chars:]

    def executions(self, workflow_id: str | None = None) -> list[dict]:
        """Every execution n8n recorded (its own SQLite database), oldest first:
        {id, workflowId, status, finished, mode, startedAt, stoppedAt}."""
        database = self.folder / ".n8n" / "database.sqlite"
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as conn:
            conn.row_factory = sqlite3.Row
            query = ("SELECT id, workflowId, status, finished, mode, startedAt, stoppedAt FROM execution_entity"
                     + (" WHERE workflowId = ?" if workflow_id else "") + " ORDER BY id")
            rows = conn.execute(query, (workflow_id,) if workflow_id else ()).fetchall()
        return [dict(row) for row in rows]

    def finished_executions(self, workflow_id: str | None = None) -> list[dict]:
        return [e for e in self.executions(workflow_id) if e["status"] not in ("new", "running", "waiting")]

    def wait_for_executions(self, workflow_id: str, count: int, timeout: float = 60.0) -> list[dict]:
        """Until at least `count` executions of the workflow have ended; returns them all."""
        return wait_until(lambda: (lambda done: done if len(done) >= count else None)(
            self.finished_executions(workflow_id)), timeout, f"{count} finished n8n execution(s) of {workflow_id}",
            interval=0.1, describe=lambda: f"executions: {self.executions(workflow_id)}\n{self.log_tail()}")

    def node_outcome(self, execution_id: int) -> dict:
        """{"last_node": ..., "error": ...} of one execution, from its stored run data."""
        database = self.folder / ".n8n" / "database.sqlite"
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as conn:
            (data,) = conn.execute("SELECT data FROM execution_data WHERE executionId = ?",
                                   (execution_id,)).fetchone()
        return summarise_run_data(data)


def summarise_run_data(flatted: str) -> dict:
    """n8n stores run data in the `flatted` format (a JSON array whose strings of digits
    point at other entries). Unpack enough of it to name the nodes that ran and the error."""
    table = json.loads(flatted)

    def deref(value, depth):
        if isinstance(value, str) and value.isdigit() and int(value) < len(table):
            entry = table[int(value)]
            return entry if isinstance(entry, str) else materialise(entry, depth + 1)
        return materialise(value, depth + 1)

    def materialise(value, depth):
        if depth > 60:
            return None
        if isinstance(value, list):
            return [deref(v, depth) for v in value]
        if isinstance(value, dict):
            return {k: deref(v, depth) for k, v in value.items()}
        return value

    root = table[0]
    result = deref(root.get("resultData"), 0) or {}
    run_data = result.get("runData") or {}
    error = result.get("error") or {}
    return {"nodes": list(run_data), "last_node": result.get("lastNodeExecuted"),
            "error": error.get("message") if isinstance(error, dict) else None}


# -- fixtures (a pytest plugin: tests/conftest.py lists this module in pytest_plugins) -------------

def ai_branch_with(folder: Path, **settings: str) -> Path:
    """A copy of the AI branch with *Bot settings* fields changed (what a builder edits)."""
    workflow = json.loads(AI_BRANCH.read_text(encoding="utf-8"))
    node = next(n for n in workflow["nodes"] if n["name"] == "Bot settings")
    for field in node["parameters"]["assignments"]["assignments"]:
        if field["name"] in settings:
            field["value"] = settings[field["name"]]
    path = folder / AI_BRANCH.name
    path.write_text(json.dumps(workflow), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def fake_model():
    """The fake OpenAI-compatible server the `OpenAI` credential points at, for the whole
    session (its URL is in n8n's credential); tests reset it (see `model`)."""
    from tests.fakes.openai_api import FakeOpenAi

    with FakeOpenAi() as fake:
        yield fake


@pytest.fixture(scope="session")
def n8n_credentials(fake_model) -> list[dict]:
    """Every credential the session's n8n gets. Fakes for other channels (SMTP, ...)
    add theirs here, session-scoped like `fake_model`."""
    return baton_credentials(fake_model.base_url, fake_model.api_key)


@pytest.fixture(scope="session")
def real_n8n(n8n_credentials, tmp_path_factory):
    """Real n8n for the session (started at its first use, ~30 s with the CLI imports):
    both workflows imported and published, the AI branch with model `fake-gpt` and a
    vision model (`fake-gpt-vision`) set in *Bot settings*."""
    from tests.fakes.openai_api import MODEL, VISION_MODEL

    binary = n8n_binary()
    folder = tmp_path_factory.mktemp("real-n8n")
    ai_branch = ai_branch_with(folder, model=MODEL, vision_model=VISION_MODEL)
    with RealN8n(binary, folder, credentials=n8n_credentials, workflows=[ai_branch, NOTIFY_BRANCH]) as n8n:
        yield n8n


@pytest.fixture
def live_n8n(real_n8n):
    """The session's real n8n; `n8n.seen` holds the execution ids from before this test
    (see `new_executions`)."""
    real_n8n.seen = {e["id"] for e in real_n8n.executions()}
    return real_n8n


@pytest.fixture
def model(fake_model, real_n8n):
    """The fake model, its script and records emptied for this test."""
    fake_model.reset()
    yield fake_model
    fake_model.reset()


def new_executions(n8n: RealN8n, workflow_id: str, count: int, timeout: float = 60.0) -> list[dict]:
    """Until `count` executions of the workflow started during this test have ended; returns them."""
    def ended():
        done = [e for e in n8n.finished_executions(workflow_id) if e["id"] not in n8n.seen]
        return done if len(done) >= count else None
    return wait_until(ended, timeout, f"{count} execution(s) of {workflow_id} to end", interval=0.1,
                      describe=lambda: f"executions: {n8n.executions(workflow_id)}\n{n8n.log_tail()}")
