"""The interactive API docs at /docs: served from the package with a strict CSP, no other host, and the
server's own OpenAPI document (the browser test in test_docs_browser.py drives the page itself)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources as package_files
from urllib.parse import urlsplit

import pytest

MEDIA_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".png": "image/png",
    "": "text/plain",
}
URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


class Page(HTMLParser):
    """What a page refers to (src, href), its inline scripts, styles and event handlers, and its data-*."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline: list[str] = []
        self.data: dict[str, str] = {}
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        for name in ("src", "href"):
            if name in values:
                self.refs.append(values[name])
        for name, value in values.items():
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}=...>")
            if name.startswith("data-"):
                self.data[name] = value
        if tag == "style":
            self.inline.append("<style>")
        self._in_script = tag == "script"
        if tag == "script" and "src" not in values:
            self.inline.append("<script> without src")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"inline script {data.strip()[:40]!r}")


def _csp(resp) -> dict[str, list[str]]:
    header = resp.headers["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in header.split(";")) if d}


def _local(ref: str) -> str:
    """The path of a same-origin reference; fails on another host or scheme."""
    parts = urlsplit(ref)
    assert not parts.scheme and not parts.netloc, f"{ref} is not on this server"
    assert ref.startswith("/"), f"{ref}: the page uses absolute paths (/docs has no trailing slash)"
    return parts.path


def test_docs_page_has_a_strict_csp_and_no_inline_code(anonymous):
    resp = anonymous.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    csp = _csp(resp)
    assert csp["default-src"] == ["'none'"]
    for directive in ("script-src", "style-src", "connect-src"):
        assert csp[directive] == ["'self'"], (directive, csp[directive])
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["frame-ancestors"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert not any("unsafe" in value for values in csp.values() for value in values)
    page = Page(resp.get_data(as_text=True))
    assert not page.inline, page.inline
    assert anonymous.get("/docs/").status_code == 200  # with or without the slash


def test_every_referenced_asset_is_served_with_its_media_type(anonymous):
    page = Page(anonymous.get("/docs").get_data(as_text=True))
    assets = [_local(ref) for ref in page.refs if ref.startswith("/docs/assets/")]
    assert {
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/docs.js",
        "/docs/assets/swagger-ui.css",
    } <= set(assets)
    seen: set[str] = set()
    while assets:
        path = assets.pop()
        if path in seen:
            continue
        seen.add(path)
        resp = anonymous.get(path)
        assert resp.status_code == 200, path
        suffix = re.search(r"(\.[a-z]+)?$", path).group(0)
        assert resp.mimetype == MEDIA_TYPES[suffix], (path, resp.mimetype)
        assert (
            resp.headers["Content-Security-Policy"]
            == anonymous.get("/docs").headers["Content-Security-Policy"]
        )
        if resp.mimetype == "text/html":  # the OAuth2 redirect page: its script is a file too
            sub = Page(resp.get_data(as_text=True))
            assert not sub.inline, (path, sub.inline)
            base = path.rpartition("/")[0]
            assets += [r if r.startswith("/") else f"{base}/{r}" for r in sub.refs]
    # the other links of the page: the error catalogue, the deprecations and the document itself
    for ref in page.refs:
        if not ref.startswith("/docs/assets/"):
            assert anonymous.get(_local(ref)).status_code == 200, ref


def test_nothing_refers_to_another_host(anonymous):
    for path in ("/docs", "/docs/assets/docs.js", "/docs/assets/docs.css"):
        text = anonymous.get(path).get_data(as_text=True)
        assert not URL.findall(text), (path, URL.findall(text))
    refs = Page(anonymous.get("/docs").get_data(as_text=True)).refs
    assert all(_local(ref) for ref in refs)


def test_the_page_loads_this_servers_openapi_document(anonymous):
    page = Page(anonymous.get("/docs").get_data(as_text=True))
    assert page.data["data-spec-url"] == "/openapi.json"
    assert page.data["data-oauth2-redirect-url"] == "/docs/assets/oauth2-redirect.html"
    init = anonymous.get("/docs/assets/docs.js").get_data(as_text=True)
    assert "root.dataset.specUrl" in init and "SwaggerUIBundle(" in init
    assert re.search(r"validatorUrl:\s*null", init), "the validator badge would load an image from swagger.io"
    assert re.search(r"queryConfigEnabled:\s*false", init)
    assert anonymous.get(page.data["data-spec-url"]).get_json()["openapi"].startswith("3.1")


def test_swagger_ui_comes_from_its_package_with_its_licence(anonymous):
    dist = package_files.files("flask_swagger_ui") / "dist"
    served = anonymous.get("/docs/assets/swagger-ui-bundle.js")
    assert served.data == (dist / "swagger-ui-bundle.js").read_bytes()
    licence = anonymous.get("/docs/assets/LICENSE")
    assert licence.status_code == 200 and "Apache License" in licence.get_data(as_text=True)


def test_unknown_assets_are_404_and_nothing_else_of_the_package_is_reachable(anonymous):
    for name in ("nope.js", "index.template.html", "..%2F__init__.py", "VERSION", "swagger-ui.js"):
        resp = anonymous.get(f"/docs/assets/{name}")
        assert resp.status_code == 404, name
        assert resp.get_json(force=True)["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("path", ["/docs", "/docs/assets/swagger-ui-bundle.js"])
def test_assets_are_revalidated_by_etag(anonymous, path):
    first = anonymous.get(path)
    assert first.headers["Cache-Control"] == "no-cache" and first.headers["ETag"]
    again = anonymous.get(path, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and not again.data


def test_the_docs_need_no_token(anonymous):
    for path in ("/docs", "/docs/assets/docs.js", "/docs/deprecations", "/docs/errors", "/openapi.json"):
        assert anonymous.get(path).status_code == 200, path
