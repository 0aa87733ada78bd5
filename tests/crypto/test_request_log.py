"""One log line per request, with the query's parameter names but never its values (they can be names,
birth dates or record numbers), nor anything from the body."""

from __future__ import annotations

import logging

from tests.helpers import created_id, patient


def test_request_lines_name_parameters_but_not_values(client, caplog):
    caplog.set_level(logging.INFO, logger="fhir_api.access")
    pid = created_id(client.post("/fhir/R4/Patient", json=patient(name=[{"family": "Quillfeather"}])))
    client.get("/fhir/R4/Patient?family=Quillfeather&birthdate=ge1961-07-20&identifier=urn:mrn|MRN-778899")
    client.get(f"/fhir/R4/Patient/{pid}")
    lines = [r.getMessage() for r in caplog.records if r.name == "fhir_api.access"]
    assert len(lines) == 3
    search = lines[1]
    assert search.startswith("GET /fhir/R4/Patient?family=***&birthdate=***&identifier=*** 200 ")
    assert "client=" in search and "request=" in search
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for value in ("Quillfeather", "quillfeather", "1961-07-20", "MRN-778899"):
        assert value not in everything
