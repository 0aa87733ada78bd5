"""Search (FHIR search-type interaction), following the Bundle's next links page by page.

    TOKEN=$(python get_token.py) QUERY="Patient?family=Chalmers&_count=10" python search.py

QUERY is a resource type and its search parameters (docs/search.md lists what is supported). _total=accurate
is added so the first page says how many match. Needs: requests.
"""

from __future__ import annotations

import os
import sys

import requests

FHIR_BASE = os.environ.get("FHIR_BASE", "http://127.0.0.1:8000/fhir/R4").rstrip("/")
TOKEN = os.environ.get("TOKEN") or sys.exit("set TOKEN (python get_token.py prints one)")
QUERY = os.environ.get("QUERY", "Patient?family=Chalmers&_count=10")
MAX_PAGES = int(os.environ.get("MAX_PAGES", "5"))

session = requests.Session()
session.headers.update({"Authorization": f"Bearer {TOKEN}", "Accept": "application/fhir+json"})
url: str | None = f"{FHIR_BASE}/{QUERY}{'&' if '?' in QUERY else '?'}_total=accurate"
pages = 0
while url and pages < MAX_PAGES:
    resp = session.get(url, timeout=30)
    if resp.status_code != 200:
        sys.exit(f"{resp.status_code}: {resp.json()['issue'][0]['diagnostics']}")
    bundle = resp.json()
    if pages == 0:
        print(f"total: {bundle.get('total', '?')}")
    pages += 1
    for entry in bundle.get("entry", []):
        res = entry["resource"]
        mode = entry.get("search", {}).get("mode", "")
        if res["resourceType"] == "OperationOutcome":  # e.g. an unknown parameter that was ignored
            print(f"note: {res['issue'][0]['diagnostics']}")
        else:
            print(f"page {pages}: {res['resourceType']}/{res['id']} ({mode})")
    # Paging uses opaque cursors: follow the next link as given, never build it.
    url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
print(f"pages: {pages}")
