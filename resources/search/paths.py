"""Search-parameter FHIRPath expressions compiled into direct accessors over resource JSON.

A general FHIRPath engine costs ~130 µs per compiled expression per resource, too slow to run every
search parameter at write time. Nearly all official R4 expressions are plain paths, so they compile here
into closures over dict lookups: dotted paths, ``|`` unions, choice types (``value as Quantity``,
``.as()``, ``.ofType()``, or a bare ``value`` meaning whichever ``value[x]`` is present),
``.where(resolve() is Type)``, ``.where(field='literal')``, ``[n]`` and ``.first()``. Anything else is
handed to fhirpathpy, compiled once.

Accessors take the JSON node (the resource itself for expressions starting with a type name) and return
the selected nodes in document order, arrays flattened as FHIRPath does: dicts for complex types, and
str/int/bool/Decimal (or float) for primitives, exactly the objects found in the input.

Choice elements are recognised from the R4 model that fhirpathpy ships (``choiceTypePaths``,
``path2Type``): the compiler follows the element types along the path, so ``Observation.value`` reads the
keys ``value`` + each type R4 allows there (``valueQuantity``, ``valueString``...) and never an unrelated
key such as ``valueSet``. Where the type is unknown at compile time (relative component expressions, or
below ``Bundle.entry.resource``) a name that is a choice element anywhere in R4 reads ``name`` plus those
type suffixes, which cannot match anything but a choice value either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any

log = logging.getLogger(__name__)

Accessor = Callable[..., list[Any]]  # accessor(node, resource=None) -> nodes
Op = Callable[[list[Any], Any], list[Any]]  # op(nodes, root resource) -> nodes

ABSTRACT_ROOTS = frozenset({"Resource", "DomainResource"})
_LITERAL_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


class Unsupported(ValueError):
    """The expression is outside the directly compiled subset."""


# -- the R4 type model ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Model:
    choices: dict[str, list[str]]  # "Observation.value" -> ["Quantity", "CodeableConcept", "String", ...]
    path_types: dict[str, str]  # "Observation.subject" -> "Reference", "Observation.valueQuantity" -> ...
    elsewhere: dict[str, str]  # backbone elements defined by reference: "Bundle.entry.link" -> "Bundle.link"
    parents: dict[str, str]  # "Age" -> "Quantity", "code" -> "string", "Patient" -> "DomainResource"
    backbones: frozenset[str]  # element paths with children of their own ("Observation.component")
    choice_names: dict[str, tuple[str, ...]]  # "value" -> every type suffix some R4 value[x] allows

    def child(self, parent: str, name: str) -> str:
        path = f"{parent}.{name}"
        return self.elsewhere.get(path, path)

    def element_type(self, path: str) -> str | None:
        """The type to continue from: a data type name, the path itself for a backbone, None if unknown."""
        return self.path_types.get(path) or (path if path in self.backbones else None)

    def fhir_type(self, name: str) -> str:
        """'Quantity' -> 'Quantity', 'DateTime'/'dateTime' -> 'dateTime', 'FHIR.string' -> 'string'."""
        name = name.removeprefix("FHIR.").removeprefix("System.")
        if name in self.parents:
            return name
        lowered = name[:1].lower() + name[1:]
        return lowered if lowered in self.parents else name

    def is_a(self, type_name: str, wanted: str) -> bool:
        """Type ``type_name`` is ``wanted`` or derives from it (Age is a Quantity, canonical is a uri)."""
        current: str | None = self.fhir_type(type_name)
        target = self.fhir_type(wanted)
        while current:
            if current == target:
                return True
            current = self.parents.get(current)
        return False


@cache
def _r4() -> dict[str, Any]:
    from fhirpathpy.models import models  # late: importing loads the JSON of four FHIR versions

    return models["r4"]


@cache
def _model() -> _Model:
    r4 = _r4()
    choices = r4["choiceTypePaths"]
    backbones = {path.rsplit(".", 1)[0] for path in [*r4["path2Type"], *choices] if path.count(".") > 1}
    names: dict[str, dict[str, None]] = {}
    for path, types in choices.items():
        names.setdefault(path.rsplit(".", 1)[1], {}).update(dict.fromkeys(types))
    return _Model(
        choices=choices,
        path_types=r4["path2Type"],
        elsewhere=r4["pathsDefinedElsewhere"],
        parents=r4["type2Parent"],
        backbones=frozenset(backbones),
        choice_names={name: tuple(types) for name, types in names.items()},
    )


# -- parsing: tokens, then a small tree of unions and paths ------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|(?P<string>'(?:[^'\\]|\\.)*')|(?P<int>\d+)|(?P<punct>[.|()\[\]=]))"
)


def _tokens(expression: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, end = 0, len(expression.rstrip())
    while pos < end:
        match = _TOKEN.match(expression, pos)
        if not match:
            raise Unsupported(f"cannot compile {expression[pos : pos + 20]!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


@dataclass(frozen=True)
class _Path:
    """``root.steps``. Steps: ("child", name) ("as", type) ("where", field, text) ("resolve", type)
    ("index", n) ("first",)."""

    root: str | tuple[_Path, ...]  # a name, or a parenthesised union
    steps: tuple[tuple[Any, ...], ...]


class _Parser:
    """Recursive descent over the subset; anything else raises Unsupported."""

    def __init__(self, expression: str) -> None:
        self.tokens = _tokens(expression)
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str]:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else ("end", "")

    def take(self, kind: str, text: str | None = None) -> str:
        token = self.peek()
        if token[0] != kind or (text is not None and token[1] != text):
            raise Unsupported(f"expected {text or kind}, found {token[1] or 'end'}")
        self.pos += 1
        return token[1]

    def parse(self) -> tuple[_Path, ...]:
        members = self.union()
        self.take("end")
        return members

    def union(self) -> tuple[_Path, ...]:
        members = [self.term()]
        while self.peek() == ("punct", "|"):
            self.pos += 1
            members.append(self.term())
        return tuple(members)

    def term(self) -> _Path:
        root: str | tuple[_Path, ...]
        if self.peek() == ("punct", "("):
            self.pos += 1
            root = self.union()
            self.take("punct", ")")
        else:
            root = self.take("ident")
        steps: list[tuple[Any, ...]] = []
        while True:
            if self.peek() == ("punct", "."):
                self.pos += 1
                steps.append(self.invocation())
            elif self.peek() == ("punct", "["):
                self.pos += 1
                steps.append(("index", int(self.take("int"))))
                self.take("punct", "]")
            else:
                break
        if self.peek() == ("ident", "as"):
            self.pos += 1
            steps.append(("as", self.take("ident")))
        return _Path(root, tuple(steps))

    def invocation(self) -> tuple[Any, ...]:
        name = self.take("ident")
        if self.peek() != ("punct", "("):
            return ("child", name)
        self.pos += 1
        if name in ("as", "ofType"):
            step: tuple[Any, ...] = ("as", self.take("ident"))
        elif name == "first":
            step = ("first",)
        elif name == "where":
            step = self.criterion()
        else:
            raise Unsupported(f"function {name}()")
        self.take("punct", ")")
        return step

    def criterion(self) -> tuple[Any, ...]:
        """``resolve() is Type`` or ``field = 'text'``."""
        if self.peek() == ("ident", "resolve") and self.peek(1) == ("punct", "("):
            self.pos += 2
            self.take("punct", ")")
            self.take("ident", "is")
            return ("resolve", self.take("ident"))
        field = self.take("ident")
        self.take("punct", "=")
        literal = self.take("string")[1:-1]
        if "\\" in literal:
            raise Unsupported("escaped string literal")
        return ("where", field, literal)


def split_union(expression: str) -> list[str]:
    """Top-level ``|`` members of an expression, outside parentheses, brackets and string literals."""
    members, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(expression):
        if quoted:
            quoted = char != "'" or expression[i - 1] == "\\"
        elif char == "'":
            quoted = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "|" and depth == 0:
            members.append(expression[start:i].strip())
            start = i + 1
    members.append(expression[start:].strip())
    return members


# -- operations over node lists ----------------------------------------------------------------------------
# ``type(x) is dict`` rather than isinstance: resource JSON is plain dicts and lists (json, simplejson), and
# this is the innermost loop of write-time indexing.
def _key(name: str) -> Op:
    def child(nodes: list[Any], root: Any) -> list[Any]:
        out: list[Any] = []
        for node in nodes:
            if type(node) is dict:
                value = node.get(name)
                if value is None:
                    continue
                if type(value) is list:
                    out.extend([v for v in value if v is not None])
                else:
                    out.append(value)
        return out

    return child


def _first_key(names: tuple[str, ...]) -> Op:
    """A choice element: the first of its possible keys present on each node (valid JSON has one)."""

    def choice(nodes: list[Any], root: Any) -> list[Any]:
        out: list[Any] = []
        for node in nodes:
            if type(node) is dict:
                for name in names:
                    value = node.get(name)
                    if value is None:
                        continue
                    if type(value) is list:
                        out.extend([v for v in value if v is not None])
                    else:
                        out.append(value)
                    break
        return out

    return choice


def _nothing(nodes: list[Any], root: Any) -> list[Any]:
    return []


def _of_resource_type(name: str) -> Op:
    if name in ABSTRACT_ROOTS:
        return lambda nodes, root: [n for n in nodes if type(n) is dict and "resourceType" in n]
    return lambda nodes, root: [n for n in nodes if type(n) is dict and n.get("resourceType") == name]


def _equals(value: Any, literal: str) -> bool:
    """FHIRPath ``=`` between a field and a string: a one-item collection equal to it."""
    if type(value) is list:
        return len(value) == 1 and value[0] == literal
    return type(value) is str and value == literal


def _where(field: str, literal: str) -> Op:
    return lambda nodes, root: [n for n in nodes if type(n) is dict and _equals(n.get(field), literal)]


def reference_type(reference: dict[str, Any], resource: Any = None) -> str | None:
    """The type a Reference points at, as ``resolve() is X`` needs it, without resolving anything.

    From the literal reference (relative, absolute or versioned; ``#id`` looks in ``resource.contained``),
    else from ``Reference.type``. ``urn:uuid:`` references have no type until a transaction rewrites them."""
    literal = reference.get("reference")
    if isinstance(literal, str):
        if literal.startswith("#"):
            return _contained_type(literal[1:], resource)
        match = _LITERAL_REFERENCE.search(literal)
        if match:
            return match.group(1)
    declared = reference.get("type")
    if isinstance(declared, str) and declared:
        return declared.rsplit("/", 1)[-1]
    return None


def _contained_type(local_id: str, resource: Any) -> str | None:
    if not isinstance(resource, dict):
        return None
    if not local_id:
        return resource.get("resourceType")
    for contained in resource.get("contained") or ():
        if isinstance(contained, dict) and contained.get("id") == local_id:
            return contained.get("resourceType")
    return None


def _resolves_to(type_name: str) -> Op:
    return lambda nodes, root: [n for n in nodes if type(n) is dict and reference_type(n, root) == type_name]


def _chain(ops: list[Op]) -> Op:
    if len(ops) == 1:
        return ops[0]

    def run(nodes: list[Any], root: Any) -> list[Any]:
        for op in ops:
            nodes = op(nodes, root)
            if not nodes:
                break
        return nodes

    return run


def _dedupe(values: list[Any]) -> list[Any]:
    """FHIRPath ``|`` drops repeats; first occurrence wins, order kept.

    Complex nodes count as repeats only when they are the same node (``Patient.name | Patient.name``);
    decimals compare with their precision (1.0 and 1.00 are different search values)."""
    out: list[Any] = []
    seen: set[tuple[Any, ...]] = set()
    for value in values:
        kind = type(value)
        if kind is dict or kind is list:
            key: tuple[Any, ...] = (kind, id(value))
        elif kind is Decimal:
            key = (kind, str(value))
        else:
            key = (kind, value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def _union(ops: list[Op]) -> Op:
    if len(ops) == 1:
        return ops[0]

    def union(nodes: list[Any], root: Any) -> list[Any]:
        out: list[Any] = []
        for op in ops:
            out.extend(op(nodes, root))
        return _dedupe(out) if len(out) > 1 else out

    return union


# -- compiling the tree, following element types -----------------------------------------------------------
def _child(name: str, context: str | None) -> tuple[Op, str | None]:
    """Step into ``name``: a choice element reads whichever typed key is present."""
    model = _model()
    if context is None:
        suffixes = model.choice_names.get(name)
        if suffixes:
            return _first_key((name, *(name + s for s in suffixes))), None
        return _key(name), None
    path = model.child(context, name)
    choice = model.choices.get(path)
    if choice:
        return _first_key(tuple(name + s for s in choice)), None
    return _key(name), model.element_type(path)


def _typed_child(name: str, wanted: str, context: str | None) -> tuple[Op, str | None]:
    """``name as Type`` (or ``.as()``/``.ofType()``): the typed keys of a choice that are such a type."""
    model = _model()
    path = model.child(context, name) if context else None
    choice = model.choices.get(path) if path else model.choice_names.get(name)
    if choice:
        keys = tuple(name + s for s in choice if model.is_a(s, wanted))
        return (_first_key(keys) if keys else _nothing), model.fhir_type(wanted)
    declared = model.element_type(path) if path else None
    if declared is None:
        raise Unsupported(f"type of {name} unknown")
    return (_key(name) if model.is_a(declared, wanted) else _nothing), declared


def _compile_path(path: _Path, context: str | None) -> tuple[Op, str | None]:
    ops: list[Op] = []
    steps = list(path.steps)
    if isinstance(path.root, tuple):
        op, context = _compile_union(path.root, context)
        ops.append(op)
    elif path.root[:1].isupper():
        ops.append(_of_resource_type(path.root))
        context = path.root
    else:
        steps.insert(0, ("child", path.root))
    i = 0
    while i < len(steps):
        step = steps[i]
        following = steps[i + 1] if i + 1 < len(steps) else None
        if step[0] == "child" and following and following[0] == "as":
            op, context = _typed_child(step[1], following[1], context)
            i += 1
        else:
            op, context = _step(step, context)
        ops.append(op)
        i += 1
    return _chain(ops), context


def _step(step: tuple[Any, ...], context: str | None) -> tuple[Op, str | None]:
    kind = step[0]
    if kind == "child":
        return _child(step[1], context)
    if kind == "where":
        model = _model()
        if context is None or model.child(context, step[1]) in model.choices:
            raise Unsupported(f"where({step[1]}=...) on an element of unknown type")
        return _where(step[1], step[2]), context
    if kind == "resolve":
        return _resolves_to(step[1]), context
    if kind == "index":
        n = step[1]
        return (lambda nodes, root: nodes[n : n + 1]), context
    if kind == "first":
        return (lambda nodes, root: nodes[:1]), context
    raise Unsupported(f"{kind} here")  # 'as' after something other than an element name


def _compile_union(members: tuple[_Path, ...], context: str | None) -> tuple[Op, str | None]:
    compiled = [_compile_path(member, context) for member in members]
    contexts = {c for _, c in compiled}
    return _union([op for op, _ in compiled]), contexts.pop() if len(contexts) == 1 else None


def _direct(expression: str) -> Accessor:
    op, _ = _compile_union(_Parser(expression).parse(), None)

    def accessor(node: Any, resource: Any = None) -> list[Any]:
        return op([node], node if resource is None else resource)

    return accessor


# -- the fhirpathpy fallback -------------------------------------------------------------------------------
def _fhirpath_resolve(references: list[Any]) -> list[Any]:
    """``resolve()`` for fhirpathpy (which lacks it): a stub resource of the referenced type."""
    from fhirpathpy.engine.nodes import ResourceNode

    types = [reference_type(r) for r in references if isinstance(r, dict)]
    return [ResourceNode.create_node({"resourceType": t}) for t in types if t]


def _plain(value: Any) -> Any:
    """fhirpathpy's nodes and FHIRPath values back to JSON-like values."""
    from fhirpathpy.engine.nodes import FP_Quantity, FP_Type, ResourceNode

    if isinstance(value, ResourceNode):
        value = value.data
    if isinstance(value, FP_Quantity):
        return {"value": value.value, "unit": value.unit}
    if isinstance(value, FP_Type):
        return str(value)
    return value


def _fallback(expression: str) -> Accessor:
    import fhirpathpy

    options = {
        "returnRawData": True,
        "userInvocationTable": {"resolve": {"fn": _fhirpath_resolve, "arity": {0: []}}},
    }
    evaluate = fhirpathpy.compile(expression, model=_r4(), options=options)

    def accessor(node: Any, resource: Any = None) -> list[Any]:
        root = node if resource is None else resource
        try:
            found = evaluate(node, {"resource": root, "rootResource": root})
        except Exception as exc:  # one odd resource must not make a write fail; the index just lacks it
            # the exception's type only: its message or traceback could quote the resource's (protected) data
            log.warning("FHIRPath evaluation failed for %r: %s", expression, type(exc).__name__)
            return []
        values = [_plain(v) for v in found]
        if any(type(v) is dict and v.get("$status") == "error" for v in values):  # how some functions fail
            log.warning("FHIRPath evaluation failed for %r (an error result)", expression)
            return []
        return [v for v in values if v is not None and not (type(v) is dict and list(v) == ["extension"])]

    return accessor


# -- public ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> Accessor:
    """An accessor for a search-parameter expression: ``accessor(node, resource=None) -> list``.

    Expressions starting with a type name (``Patient.name``) apply to a resource and return [] for other
    types (``Resource.``/``DomainResource.`` accept any resource); relative ones (component expressions
    such as ``value.as(Quantity)``) apply to the node given. ``resource`` is the enclosing resource when
    ``node`` is part of one: it resolves ``#contained`` references and FHIRPath's ``%resource``."""
    if not expression.strip():
        raise ValueError("empty search-parameter expression")
    idiom = _PRESENT_AND_NOT_FALSE.match(expression.strip())
    if idiom:
        return _present_and_not_false(_direct(idiom["path"]))
    try:
        return _direct(expression)
    except Unsupported:
        return _fallback(expression)


# ``X.exists() and X != false`` (Patient.deceased): true for deceasedBoolean true or any deceasedDateTime.
_PRESENT_AND_NOT_FALSE = re.compile(r"^(?P<path>[A-Za-z][\w.]*)\.exists\(\) and (?P=path) != false$")


def _present_and_not_false(inner: Accessor) -> Accessor:
    def accessor(node: Any, resource: Any = None) -> list[Any]:
        found = inner(node, resource)
        return [bool(found) and found != [False]]

    return accessor


@lru_cache(maxsize=4096)
def is_compiled(expression: str) -> bool:
    """True when the expression runs as direct dict lookups, False when it needs fhirpathpy."""
    if _PRESENT_AND_NOT_FALSE.match(expression.strip()):
        return True
    try:
        _direct(expression)
    except Unsupported:
        return False
    return True
