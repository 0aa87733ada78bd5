"""A faster equivalent of one fhir.resources (fhir_core) model check, installed before any model is built.

``FHIRAbstractModel.reject_null_complex_elements`` runs before every model instance is validated (some 15
per Patient) and walks all the class's fields, asking of each whether it is a list of a complex type: a
quarter of validating the bench Patient (135 -> 102 us without it), ~3 % of a create's CPU under load.
Which fields those are is fixed per class, so here it is computed once per class, and the body is scanned
only for those fields. When one of them does hold a null, the library's own check runs and raises its own
errors: the outcome is the library's in every case, only the common case (no nulls) is quicker.

Pydantic binds a model's validators when each class is built, looking them up by name, so this must happen
before ``fhir.resources.R4B`` builds its first model: ``fhir_api/__init__.py`` and ``resources/__init__.py``
import it first. ``tests/resources/test_validation.py`` checks that it is in place and that both outcomes
are the library's.
"""

from __future__ import annotations

from typing import Any

from fhir_core import fhirabstractmodel as _core

_Model = _core.FHIRAbstractModel
_declared = _Model.__dict__.get("reject_null_complex_elements")
_library_check = getattr(_declared, "__func__", None)  # None: a fhir_core without it (nothing to replace)
_COMPLEX_LISTS: dict[type, tuple[tuple[str, str | None], ...]] = {}


def _complex_lists(cls: type[Any]) -> tuple[tuple[str, str | None], ...]:
    """(name, alias) of the class's list-of-complex-type fields, as the library's check selects them."""
    found = _COMPLEX_LISTS.get(cls)
    if found is None:
        found = _COMPLEX_LISTS[cls] = tuple(
            (name, field.alias)
            for name, field in cls.model_fields.items()
            if _core.is_list_type(field) and not _core.is_primitive_type(field) and not name.endswith("__ext")
        )
    return found


def reject_null_complex_elements(cls: type[Any], data: Any) -> Any:
    if isinstance(data, dict):
        for name, alias in _complex_lists(cls):
            value = data.get(alias if alias and alias in data else name)
            if isinstance(value, list) and None in value:
                return _library_check(cls, data)  # raises, naming every such element
    return data


def install() -> bool:
    """Replace the check on the base model; False (and nothing changed) once a model has been built, or
    when this fhir_core does not have the check or the helpers it selects fields with."""
    helpers = all(callable(getattr(_core, name, None)) for name in ("is_list_type", "is_primitive_type"))
    if _library_check is None or not helpers or _Model.__subclasses__():
        return False
    _Model.reject_null_complex_elements = classmethod(reject_null_complex_elements)  # type: ignore[assignment]
    return True


INSTALLED = install()
