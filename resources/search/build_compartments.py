"""Maintainer script: the official R4 CompartmentDefinitions, trimmed to what compartment search needs.

    python -m resources.search.build_compartments [DIR]

DIR defaults to ``../shared/fhir-r4/definitions``. Writes ``resources/data/compartments.json``:
compartment type -> resource type -> the reference parameters that put a resource in the compartment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "fhir-r4" / "definitions"
OUTPUT = REPO_ROOT / "resources" / "data" / "compartments.json"
NOTE = (
    "Derived from the official FHIR R4 4.0.1 CompartmentDefinitions (hl7.fhir.r4.core 4.0.1), CC0-1.0, "
    "by resources/search/build_compartments.py; do not edit by hand. '{def}' means the compartment's own "
    "resource."
)


def build(source: Path) -> dict[str, object]:
    compartments: dict[str, dict[str, list[str]]] = {}
    for path in sorted(source.glob("CompartmentDefinition-*.json")):
        definition = json.loads(path.read_text())
        if definition.get("url", "").startswith(
            "http://hl7.org/fhir/CompartmentDefinition/"
        ) and not path.stem.endswith("example"):
            members = {r["code"]: r["param"] for r in definition.get("resource", []) if r.get("param")}
            compartments[definition["code"]] = dict(sorted(members.items()))
    return {"note": NOTE, "compartments": dict(sorted(compartments.items()))}


def main(argv: list[str]) -> None:
    source = Path(argv[0]) if argv else DEFAULT_SOURCE
    OUTPUT.write_text(json.dumps(build(source), indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUTPUT.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
