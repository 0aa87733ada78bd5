"""The developer guide (docs/*.md) matches the code: its links resolve, every URL it names is a route of the
app, every `fhir-api` command exists, every error slug and FHIR_ variable is real, and every example of the
search cookbook runs (on a small seeded population) with the status the page says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from fhir_api.cli import main
from fhir_api.errors import all_error_classes
from tests.helpers import authorized_client

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# The guide's pages (deployment.md and versioning.md have owners and tests of their own).
PAGES = [
    "index.md",
    "quickstart.md",
    "authentication.md",
    "search.md",
    "errors.md",
    "audit-and-encryption.md",
    "subscriptions.md",
    "samples/README.md",
]
CODE_DIRS = ("fhir_api", "audit", "crypto", "resources", "seed")

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$", re.M)
_URL = re.compile(
    r"(\$BASE|\$SERVER|\$FHIR_BASE|http://127\.0\.0\.1:8000|http://localhost:8000|`|\s|\()"
    r"(/(?:fhir/R4|auth|audit|docs|healthz|readyz|metrics|openapi\.json)[^\s\"'`)|?&]*)"
)
_COMMAND = re.compile(r"fhir-api ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)")


def text(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    plain = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", plain).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES)
def test_links_resolve(page):
    here = (DOCS / page).parent
    broken = []
    for target in _LINK.findall(text(page)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, fragment = target.partition("#")
        file = (here / path).resolve() if path else DOCS / page
        if not file.exists():
            broken.append(target)
        elif fragment and file.suffix == ".md":
            anchors = {anchor(h) for h in _HEADING.findall(file.read_text(encoding="utf-8"))}
            if fragment not in anchors:
                broken.append(target)
    assert not broken, f"{page}: broken links {broken}"


def concrete(path: str) -> str:
    """A documented path with its placeholders filled in, as a request would name it."""
    path = path.partition("#")[0]
    path = re.sub(r"\[/[^\]]*\]", "", path)  # optional parts: _history[/{vid}]
    path = path.replace("[base]", "/fhir/R4")
    path = re.sub(r"\{(type|Compartment)\}|\[type\]", "Patient", path)
    path = re.sub(r"\{vid\}|\[vid\]", "1", path)
    path = re.sub(r"\{[^}]*\}|\[[^\]]*\]|<[^>]*>|\$[A-Z_]+", "x1", path)
    return path.rstrip(".,:;")


@pytest.mark.parametrize("page", PAGES)
def test_every_url_is_a_route(app, page):
    adapter = app.url_map.bind("localhost")
    unknown = []
    for prefix, raw in _URL.findall(text(page)):
        path = concrete(("/fhir/R4" if prefix in ("$BASE", "$FHIR_BASE") else "") + raw)
        if path in ("/auth", "/auth/", "/audit/"):
            continue  # prefixes named in prose ("under /auth/"), and the tokens' issuer (iss), not routes
        try:
            adapter.match(path, method="GET")
        except MethodNotAllowed:
            pass  # the route exists, for other methods
        except NotFound:
            unknown.append(path)
    assert not unknown, f"{page} names URLs the app does not serve: {sorted(set(unknown))}"


@pytest.mark.parametrize("page", PAGES)
def test_every_command_exists(page):
    ctx = click.Context(main)
    missing = []
    for words in _COMMAND.findall(text(page)):
        name, _, sub = words.partition(" ")
        command = main.get_command(ctx, name)
        known_sub = (
            not sub or not isinstance(command, click.Group) or command.get_command(ctx, sub) is not None
        )
        if command is None or not known_sub:
            missing.append(words)
    assert not missing, f"{page} names commands the CLI lacks: {missing}"


def test_error_slugs_exist(app):
    known = {cls.slug for cls in all_error_classes()}
    named = set(re.findall(r"^\| \d{3} \| ([^|]+) \|", text("errors.md"), flags=re.M))
    slugs = {s.strip("` ") for cell in named for s in cell.split(",")}
    assert slugs and not slugs - known, f"errors.md names unknown slugs: {sorted(slugs - known)}"


def test_environment_variables_exist():
    sources = [p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")]
    sources += [ROOT / "gunicorn.conf.py", ROOT / "tests" / "helpers.py"]
    code = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    named = {v for page in PAGES for v in re.findall(r"\bFHIR_([A-Z][A-Z0-9_]*[A-Z0-9])\b", text(page))}
    named -= {"BASE"}  # the samples' own variable, not the server's
    unknown = sorted(v for v in named if f'"{v}"' not in code and f"FHIR_{v}" not in code)
    assert not unknown, f"the guide names FHIR_ variables the code never reads: {unknown}"


# -- the search cookbook, run -------------------------------------------------------------------------------
def cookbook() -> list[tuple[str, str, str, dict[str, str], dict[str, str], int]]:
    """(line, method, url, headers, form, expected status) for every `fhir ...` line of search.md."""
    out = []
    for line in re.findall(r"^\s*(fhir .*)$", text("search.md"), flags=re.M):
        command, _, comment = line.partition("#")
        expected = 400 if comment.strip().startswith("400") else 200
        words = shlex.split(command.replace("\\$", "$").replace("$BASE", "/fhir/R4"))[1:]
        method, headers, form, url = "GET", {}, {}, ""
        while words:
            word = words.pop(0)
            if word == "-X":
                method = words.pop(0)
            elif word == "-H":
                name, _, value = words.pop(0).partition(":")
                headers[name.strip()] = value.strip()
            elif word == "-d":
                name, _, value = words.pop(0).partition("=")
                form[name] = value
            else:
                url = word
        out.append((line, method, url, headers, form, expected))
    return out


def test_the_cookbook_has_examples():
    assert len(cookbook()) >= 40


def test_every_cookbook_example_answers_as_documented(app):
    from seed.loader import load_population

    with app.app_context():
        load_population(patients=2, seed=42)
    client = authorized_client(app)
    wrong = []
    for line, method, url, headers, form, expected in cookbook():
        resp = client.open(url, method=method, headers=headers, data=form or None)
        body = resp.get_json(force=True)
        ignored = [
            e["resource"]["issue"][0]["diagnostics"]
            for e in (body.get("entry") or [])
            if e.get("search", {}).get("mode") == "outcome"
        ]
        in_unsupported_section = "near" in url or "foo=" in url
        if resp.status_code != expected or (ignored and not in_unsupported_section):
            wrong.append(f"{line}\n    -> {resp.status_code} {ignored or body.get('issue', '')}")
    assert not wrong, "search.md examples that do not answer as documented:\n" + "\n".join(wrong)
