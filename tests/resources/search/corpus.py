"""Corpus for the search tests: Synthea patients and the official R4 examples, written through PUT, and a
plain-Python reading of the same JSON that tells what each search must return.

Nothing here goes through the search engine: the expected results are computed from the dicts with the
FHIR search rules written out again (token ``system|code``, string prefix after case and accent folding,
date prefixes over the implicit precision of a value, references as ``Type/id``).
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

FHIR = "application/fhir+json"
BASE = "/fhir/R4"
LOCAL_BASE = "http://localhost/fhir/R4/"  # the test client's base URL
# A deterministic subset of the 40 Synthea patients: the first ones by file name. 15 of them bring 3,934
# resources with their organisations and practitioners, 1,856 of them Observations (paging well beyond
# 1,000 matches), written in about a third of the time all 11,160 entries take.
SYNTHEA_PATIENTS = 15
SUPPORT_BUNDLES = ("hospitalInformation", "practitionerInformation")

Resource = dict[str, Any]
Key = tuple[str, str]  # (resource type, id)


# -- loading -------------------------------------------------------------------------------------------------
def synthea_files(root: Path, patients: int = SYNTHEA_PATIENTS) -> list[Path]:
    """The organisation and practitioner bundles first, then the first ``patients`` patient bundles."""
    folder = root / "synthea-r4"
    support = [p for prefix in SUPPORT_BUNDLES for p in sorted(folder.glob(f"{prefix}*.json"))]
    people = sorted(p for p in folder.glob("*.json") if not p.name.startswith(SUPPORT_BUNDLES))
    return support + people[:patients]


def rewrite_references(node: Any, targets: dict[str, str]) -> Any:
    """A copy of ``node`` with every string equal to a known ``urn:uuid:`` fullUrl replaced by Type/id."""
    if isinstance(node, dict):
        return {key: rewrite_references(value, targets) for key, value in node.items()}
    if isinstance(node, list):
        return [rewrite_references(value, targets) for value in node]
    if isinstance(node, str):
        return targets.get(node, node)
    return node


def synthea_resources(files: list[Path]) -> list[Resource]:
    """Every entry of the transaction bundles, with its fullUrl's uuid as id and references rewritten."""
    bundles = [json.loads(path.read_bytes()) for path in files]
    targets: dict[str, str] = {}
    for bundle in bundles:
        for entry in bundle["entry"]:
            full_url = entry["fullUrl"]
            assert full_url.startswith("urn:uuid:"), full_url
            targets[full_url] = f"{entry['resource']['resourceType']}/{full_url.removeprefix('urn:uuid:')}"
    out = []
    for bundle in bundles:
        assert bundle["type"] == "transaction"
        for entry in bundle["entry"]:
            assert entry["request"]["method"] == "POST"
            resource = rewrite_references(entry["resource"], targets)
            resource["id"] = entry["fullUrl"].removeprefix("urn:uuid:")
            out.append(resource)
    return out


@dataclass
class Corpus:
    """What the server accepted, by (type, id), and what it refused; the JSON each search is checked on."""

    resources: dict[Key, Resource] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # example file -> HTTP status
    synthea_count: int = 0
    example_count: int = 0
    seconds: float = 0.0
    _by_type: dict[str, list[Resource]] | None = field(default=None, repr=False)

    def of_type(self, res_type: str) -> list[Resource]:
        if self._by_type is None:
            self._by_type = {}
            for (t, _), resource in self.resources.items():
                self._by_type.setdefault(t, []).append(resource)
        return self._by_type.get(res_type, [])

    def get(self, reference: str) -> Resource | None:
        key = parse_reference(reference)
        return self.resources.get(key) if key else None

    def ids(self, res_type: str, where: Callable[[Resource], bool] = lambda r: True) -> set[str]:
        return {r["id"] for r in self.of_type(res_type) if where(r)}


def _put(client, res_type: str, res_id: str, body: bytes | str):
    return client.put(f"{BASE}/{res_type}/{res_id}", data=body, content_type=FHIR)


def load(client, root: Path) -> Corpus:
    """Synthea (support bundles first) and then every official example, each by PUT with its own id."""
    corpus = Corpus()
    started = time.perf_counter()
    for resource in synthea_resources(synthea_files(root)):
        resp = _put(client, resource["resourceType"], resource["id"], json.dumps(resource))
        assert resp.status_code in (200, 201), resp.get_data(as_text=True)[:500]
        corpus.resources[(resource["resourceType"], resource["id"])] = resource
        corpus.synthea_count += 1
    for path in sorted((root / "hl7-r4-examples").glob("*.json")):
        raw = path.read_bytes()
        resource = json.loads(raw)
        resp = _put(client, resource["resourceType"], resource["id"], raw)
        if resp.status_code in (200, 201):
            key = (resource["resourceType"], resource["id"])
            assert key not in corpus.resources, key
            corpus.resources[key] = resource
            corpus.example_count += 1
        else:
            assert 400 <= resp.status_code < 500, (path.name, resp.status_code)
            corpus.refused[path.name] = resp.status_code
    corpus.seconds = time.perf_counter() - started
    return corpus


# -- searching through the API -------------------------------------------------------------------------------
@dataclass
class Page:
    matches: list[str]  # "Type/id", in page order
    included: list[str]
    links: dict[str, str]
    total: int | None


def get_page(client, url: str) -> Page:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    resp = client.get(path)
    assert resp.status_code == 200, (url, resp.status_code, resp.get_data(as_text=True)[:1000])
    bundle = json.loads(resp.get_data())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset", url
    matches: list[str] = []
    included: list[str] = []
    for entry in bundle.get("entry") or []:
        mode = entry["search"]["mode"]
        if mode == "outcome":
            raise AssertionError(f"{url}: the server reported {json.dumps(entry['resource'])}")
        resource = entry["resource"]
        ref = f"{resource['resourceType']}/{resource['id']}"
        (matches if mode == "match" else included).append(ref)
    links = {link["relation"]: link["url"] for link in bundle.get("link") or []}
    return Page(matches, included, links, bundle.get("total"))


def pages(client, url: str, relation: str = "next", limit: int = 500) -> Iterator[Page]:
    """The page at ``url`` and every page reached from it by ``relation`` links."""
    seen: set[str] = set()
    current: str | None = url
    while current:
        assert current not in seen, f"{relation} link loops back to {current}"
        assert len(seen) < limit, f"more than {limit} pages from {url}"
        seen.add(current)
        page = get_page(client, current)
        yield page
        current = page.links.get(relation)


def search_all(client, url: str) -> tuple[list[str], list[Page]]:
    """Every match of a search over all its pages (no match may appear twice), and the pages."""
    found: list[Page] = list(pages(client, url))
    matches = [ref for page in found for ref in page.matches]
    duplicates = sorted(ref for ref, n in Counter(matches).items() if n > 1)
    assert not duplicates, f"{url}: returned more than once: {duplicates[:10]}"
    return matches, found


# -- the expected side: FHIR search rules over plain dicts ---------------------------------------------------
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def parse_reference(reference: Any) -> Key | None:
    """A literal reference to a resource on this server as (type, id): 'Patient/1', 'Patient/1/_history/2'
    or an absolute URL under this server's base. Contained ('#x'), other servers' URLs and URNs -> None."""
    if not isinstance(reference, str) or reference.startswith("#"):
        return None
    if "://" in reference or reference.startswith("urn:"):
        if not reference.startswith(LOCAL_BASE):
            return None
        reference = reference.removeprefix(LOCAL_BASE)
    match = _REFERENCE.search(reference)
    return (match.group(1), match.group(2)) if match else None


def walk(node: Any, dotted: str) -> list[Any]:
    """The values at a dotted path, arrays flattened at every step (as FHIRPath does)."""
    current = [node]
    for name in dotted.split("."):
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, dict) and name in item:
                value = item[name]
                nxt.extend(value if isinstance(value, list) else [value])
        current = [v for v in nxt if v is not None]
    return current


def references(resource: Resource, dotted: str, target: str | None = None) -> set[str]:
    """Literal references at a path, as 'Type/id' (optionally of one target type)."""
    out = set()
    for node in walk(resource, dotted):
        key = parse_reference(node.get("reference") if isinstance(node, dict) else None)
        if key and (target is None or key[0] == target):
            out.add(f"{key[0]}/{key[1]}")
    return out


def fold(text: str) -> str:
    """Case- and accent-insensitive form of a string, whitespace collapsed."""
    stripped = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


NAME_PARTS = ("family", "given", "prefix", "suffix", "text")


def name_strings(resource: Resource, element: str = "name", parts: Iterable[str] = NAME_PARTS) -> list[str]:
    out = []
    for name in walk(resource, element):
        if isinstance(name, dict):
            for part in parts:
                out += [v for v in walk(name, part) if isinstance(v, str)]
        elif isinstance(name, str):
            out.append(name)
    return out


def string_starts(values: Iterable[str], prefix: str) -> bool:
    wanted = fold(prefix)
    return any(fold(v).startswith(wanted) for v in values)


def tokens(node: Any) -> list[tuple[str | None, str | None]]:
    """(system, code) pairs of a CodeableConcept, Coding, Identifier or code."""
    if isinstance(node, str):
        return [(None, node)]
    if not isinstance(node, dict):
        return []
    if "coding" in node:
        return [(c.get("system"), c.get("code")) for c in node["coding"] if isinstance(c, dict)]
    if "value" in node:
        return [(node.get("system"), node.get("value"))]
    if "code" in node:
        return [(node.get("system"), node.get("code"))]
    return []


def has_token(nodes: Iterable[Any], wanted: str) -> bool:
    """``code``, ``system|code``, ``|code`` or ``system|`` against every node."""
    system, bar, code = wanted.partition("|")
    pairs = [pair for node in nodes for pair in tokens(node)]
    if not bar:
        return any(c == wanted for _, c in pairs)
    if not system:
        return any(s is None and c == code for s, c in pairs)
    if not code:
        return any(s == system for s, _ in pairs)
    return any(s == system and c == code for s, c in pairs)


# dates: a value stands for the whole range of its precision, [low, high), in UTC when it has no zone
MIN = datetime(1, 1, 1, tzinfo=UTC)
MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def date_range(text: str) -> tuple[datetime, datetime]:
    if re.fullmatch(r"\d{4}", text):
        low = datetime(int(text), 1, 1, tzinfo=UTC)
        return low, low.replace(year=low.year + 1)
    if re.fullmatch(r"\d{4}-\d{2}", text):
        year, month = map(int, text.split("-"))
        low = datetime(year, month, 1, tzinfo=UTC)
        return low, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        low = datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        return low, low + timedelta(days=1)
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2})(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?", text)
    assert match, f"not a FHIR date/dateTime/instant: {text!r}"
    low = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if low.tzinfo is None:
        low = low.replace(tzinfo=UTC)
    if match.group(3):
        step = timedelta(microseconds=10 ** max(0, 7 - len(match.group(3))))
    elif match.group(2):
        step = timedelta(seconds=1)
    else:
        step = timedelta(minutes=1)
    return low.astimezone(UTC), (low + step).astimezone(UTC)


def date_ranges(resource: Resource, element: str) -> list[tuple[datetime, datetime]]:
    """Ranges of a date, dateTime, instant or Period element, or of a choice ``element[x]`` of those."""
    out = []
    for suffix in ("", "DateTime", "Date", "Instant", "Period"):
        for node in walk(resource, element + suffix):
            if isinstance(node, str):
                out.append(date_range(node))
            elif isinstance(node, dict) and (node.get("start") or node.get("end")):
                start, end = node.get("start"), node.get("end")
                out.append((date_range(start)[0] if start else MIN, date_range(end)[1] if end else MAX))
    return out


def date_matches(ranges: list[tuple[datetime, datetime]], search: str) -> bool:
    """R4 prefixes over [low, high): eq/ne the target inside (or not) the search range; gt/ge/lt/le the
    target overlaps the range above/below it; sa/eb the target lies wholly after/before it."""
    prefixes = ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb")
    prefix, value = (search[:2], search[2:]) if search[:2] in prefixes else ("eq", search)
    s_low, s_high = date_range(value)
    test = {
        "eq": lambda lo, hi: lo >= s_low and hi <= s_high,
        "ne": lambda lo, hi: not (lo >= s_low and hi <= s_high),
        "gt": lambda lo, hi: hi > s_high,
        "ge": lambda lo, hi: hi > s_low,
        "lt": lambda lo, hi: lo < s_low,
        "le": lambda lo, hi: lo < s_high,
        "sa": lambda lo, hi: lo >= s_high,
        "eb": lambda lo, hi: hi <= s_low,
    }[prefix]
    return any(test(lo, hi) for lo, hi in ranges)


def quantities(resource: Resource, element: str) -> list[dict[str, Any]]:
    return [
        q for q in walk(resource, element) if isinstance(q, dict) and isinstance(q.get("value"), int | float)
    ]


# -- _include / _revinclude ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    """``Source:param`` of an _include or _revinclude, with the path that parameter reads."""

    source: str
    path: str
    target: str | None = None
    iterate: bool = False


def included(
    corpus: Corpus, matches: Iterable[str], includes: list[Link], revincludes: list[Link]
) -> set[str]:
    """What a page with these matches must include: non-iterate links from the matches, iterate links
    again from everything included, until nothing new turns up. Only resources that exist count."""
    found: set[str] = set()
    frontier, first = set(matches), True
    seen = set(frontier)
    while frontier:
        fresh: set[str] = set()
        wanted_inc = [link for link in includes if first or link.iterate]
        wanted_rev = [link for link in revincludes if first or link.iterate]
        for ref in frontier:
            resource = corpus.get(ref)
            if resource is None:
                continue
            for link in wanted_inc:
                if resource["resourceType"] == link.source:
                    fresh |= references(resource, link.path, link.target)
        for link in wanted_rev:
            for source in corpus.of_type(link.source):
                if references(source, link.path, link.target) & frontier:
                    fresh.add(f"{link.source}/{source['id']}")
        fresh = {ref for ref in fresh if ref not in seen and corpus.get(ref) is not None}
        seen |= fresh
        found |= fresh
        frontier, first = fresh, False
    return found
