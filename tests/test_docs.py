"""docs/api.md and docs/settings.md are generated from the code (scripts/gen_docs.py) and must match it."""
import importlib.util
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from config import Settings

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `.venv/bin/python scripts/gen_docs.py` and commit docs/"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _load_generator()


def _assert_fresh(path: Path, text: str) -> None:
    diffs = gen_docs.stale({path: text})
    assert not diffs, f"{path.relative_to(ROOT)} is out of date: {FIX}.\n" + "".join(diffs)[:6000]


def test_the_api_reference_is_up_to_date(client):
    _assert_fresh(gen_docs.API_MD, gen_docs.render_api(client.get("/openapi.json").json))


def test_the_settings_reference_is_up_to_date():
    _assert_fresh(gen_docs.SETTINGS_MD, gen_docs.render_settings())


def test_every_setting_has_a_meaning():
    missing = [f.name for f in fields(Settings) if not f.metadata.get("help", "").strip()]
    assert not missing, (f"settings without a meaning: {', '.join(missing)}; declare them in config.py as "
                         "NAME: type = setting(default, \"what it means\")")


def test_every_setting_is_in_the_settings_reference():
    text = gen_docs.SETTINGS_MD.read_text()
    for f in fields(Settings):
        assert f"| `{f.name}` | {f.type} |" in text, f"{f.name} is missing from docs/settings.md: {FIX}"


def test_every_route_is_in_the_api_reference_with_its_auth_and_answers(client):
    spec = client.get("/openapi.json").json
    text = gen_docs.API_MD.read_text()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            heading = f"### `{method.upper()} {path}`"
            assert heading in text, f"{heading} is missing: {FIX}"
            section = text.split(heading, 1)[1].split("\n### ", 1)[0]
            auth = next(line for line in section.splitlines() if line.startswith("- Auth: "))
            assert all(f"`{role}`" in auth for role in operation.get("x-roles", [])), auth
            for status, response in operation["responses"].items():
                assert f"- **{status}** " in section
                for code in response.get("x-error-codes", []):
                    assert f"`{code}`" in section


def test_request_fields_are_documented_with_type_requirement_and_meaning(client):
    spec = client.get("/openapi.json").json
    text = gen_docs.API_MD.read_text()
    for name in ("Escalate", "BotReply", "AgentCreate", "AgentMessage", "Transfer"):
        schema = spec["components"]["schemas"][name]
        section = text.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
        for field, prop in schema["properties"].items():
            required = "yes" if field in schema.get("required", ()) else "no"
            row = next(line for line in section.splitlines() if line.startswith(f"| `{field}` |"))
            assert f"| {required} |" in row and prop["description"] in row, row


def test_check_mode_fails_on_a_stale_document_and_passes_once_rewritten(client, tmp_path, monkeypatch, capsys):
    spec = client.get("/openapi.json").json
    monkeypatch.setattr(gen_docs, "openapi_document", lambda: spec)
    monkeypatch.setattr(gen_docs, "ROOT", tmp_path)
    monkeypatch.setattr(gen_docs, "API_MD", tmp_path / "docs" / "api.md")
    monkeypatch.setattr(gen_docs, "SETTINGS_MD", tmp_path / "docs" / "settings.md")
    assert gen_docs.main(["--check"]) == 1                      # nothing written yet
    assert gen_docs.main([]) == 0
    assert gen_docs.main(["--check"]) == 0
    (tmp_path / "docs" / "settings.md").write_text(gen_docs.render_settings().replace("OFFER_TIMEOUT", "OFFER"))
    capsys.readouterr()
    assert gen_docs.main(["--check"]) == 1
    captured = capsys.readouterr()
    assert "-| `OFFER` |" in captured.out and "+| `OFFER_TIMEOUT` |" in captured.out
    assert "scripts/gen_docs.py" in captured.err


@pytest.mark.timeout(120)
def test_the_generator_runs_on_its_own_and_finds_the_committed_docs_fresh():
    result = subprocess.run([sys.executable, "scripts/gen_docs.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=110)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_readme_and_docs_link_only_to_files_in_the_repository():
    import re

    root = Path(__file__).resolve().parents[1]
    broken = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "bench" / "README.md",
                 root / "tests" / "fixtures" / "README.md", root / "n8n_workflows" / "README.md"]:
        if not page.exists():
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue                                  # a URL or an anchor in the same page
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(root) or not path.exists():
                broken.append(f"{page.relative_to(root)} → {target}")
    assert broken == []
