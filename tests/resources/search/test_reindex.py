"""``fhir-api search reindex`` rebuilds index rows from stored resources."""

from __future__ import annotations

from click.testing import CliRunner

from fhir_api.cli import main


def _names(client, query: str) -> set[str]:
    bundle = client.get(f"/fhir/R4/{query}").get_json()
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def test_reindex_indexes_resources_written_without_indexes(app, client, database_url, monkeypatch):
    app.config["SEARCH_INDEXING"] = False
    for pid, family in (("r1", "Reindexson"), ("r2", "Other")):
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}
        assert client.put(f"/fhir/R4/Patient/{pid}", json=body).status_code == 201
    client.delete("/fhir/R4/Patient/r2")
    app.config["SEARCH_INDEXING"] = True
    assert _names(client, "Patient?name=reindex") == set()

    monkeypatch.setenv("FHIR_DATABASE_URL", database_url)
    result = CliRunner().invoke(main, ["search", "reindex", "--batch", "1"])
    assert result.exit_code == 0, result.output
    assert "reindexed 1 resources" in result.output  # the deleted one is not indexed
    assert _names(client, "Patient?name=reindex") == {"r1"}
    assert _names(client, "Patient?name=other") == set()


def test_reindex_replaces_stale_rows(app, client, database_url, monkeypatch):
    client.put("/fhir/R4/Patient/s1", json={"resourceType": "Patient", "id": "s1", "gender": "male"})
    monkeypatch.setenv("FHIR_DATABASE_URL", database_url)
    assert CliRunner().invoke(main, ["search", "reindex", "--type", "Patient"]).exit_code == 0
    assert CliRunner().invoke(main, ["search", "reindex"]).exit_code == 0  # twice: no duplicate rows
    bundle = client.get("/fhir/R4/Patient?gender=male&_total=accurate").get_json()
    assert bundle["total"] == 1
