"""Resource JSON written by orjson must be byte for byte what simplejson wrote (stored and served text)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import simplejson
from simplejson import RawJSON

from resources.jsonio import dumps, loads

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "fhir-r4" / "hl7-r4-examples"


def _simplejson(value):
    return simplejson.dumps(value, use_decimal=True, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize(
    "text",
    [
        '{"valueDecimal":1.50,"b":[1E+2,-0,0.000001,1e-7,123456789012345678901234567890.5,1.0e10,-0.0]}',
        '{"s":"\\u2028\\u00e9\\u0000\\u001f/\\\\\\"\\t","n":null,"t":true,"f":false,"e":{},"a":[]}',
        '{"z":1,"a":2,"m":{"y":[3],"b":"x"}}',
    ],
    ids=["decimals", "escapes", "key order"],
)
def test_dumps_keeps_what_was_parsed(text):
    value = loads(text)
    assert dumps(value) == _simplejson(value)
    assert loads(dumps(value)) == value


def test_decimals_keep_their_precision():
    assert dumps({"valueQuantity": {"value": Decimal("1.50")}}) == '{"valueQuantity":{"value":1.50}}'


def test_every_code_point_as_simplejson_wrote_it():
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    value = {"text": ["".join(chars[i : i + 4096]) for i in range(0, len(chars), 4096)]}
    assert dumps(value) == _simplejson(value)


def test_opened_sealed_elements_are_embedded_without_falling_back(monkeypatch):
    """A read's body holds each opened element as ``RawJSON``: orjson must write it (the fallback is slow)."""
    value = {"resourceType": "Patient", "name": [RawJSON('{"family":"Ünal","given":["Ann"]}')], "x": 1.5}
    expected = _simplejson(value)
    monkeypatch.setattr(simplejson, "dumps", lambda *a, **k: pytest.fail("fell back to simplejson"))
    assert (
        dumps(value)
        == expected
        == '{"resourceType":"Patient","name":[{"family":"Ünal","given":["Ann"]}],"x":1.5}'
    )


def test_integers_beyond_64_bits_fall_back_to_simplejson():
    value = loads('{"n":123456789012345678901234567890,"m":[-18446744073709551617]}')
    assert dumps(value) == '{"n":123456789012345678901234567890,"m":[-18446744073709551617]}'


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/fhir-r4 is absent")
def test_every_official_example_as_simplejson_wrote_it():
    checked = 0
    for path in sorted(EXAMPLES.rglob("*.json")):
        try:
            value = loads(path.read_bytes())
        except Exception:
            continue  # the examples that are not JSON objects are refused elsewhere
        assert dumps(value) == _simplejson(value), path.name
        checked += 1
    assert checked > 500
