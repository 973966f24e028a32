"""GBNF grammars that make a model's answer match the request's `response_format`.

`json_object` takes llama.cpp's JSON grammar; `json_schema` goes through llama.cpp's own
converter (`llama_grammar.json_schema_to_gbnf`). That converter quietly drops what it cannot
express (number bounds, `not`, `uniqueItems`, unknown string formats, keywords beside a `$ref`
...), so `schema_gbnf` first walks the schema and refuses every keyword the converter would
drop: a schema is enforced in full or refused with UnsupportedFormat (400 naming
`response_format`), never loosened silently. Annotations (`title`, `description`, ...) are
removed before conversion, since they change nothing. `oneOf` is enforced as `anyOf`; its
alternatives are almost always disjoint (tagged unions), where the two mean the same.

Conversion is pure and cached per schema; `GrammarCache` also has llama.cpp parse each grammar
once per model, since a sampler built from a grammar it cannot parse is a null pointer.
`TokenCheck` asks a grammar about one token: greedy decoding takes the argmax when the grammar
allows it (the masked argmax would be the same token) and pays for a pass over the whole
vocabulary only when it does not.
"""

from __future__ import annotations

import ctypes
import re
import threading
from functools import lru_cache
from typing import Any, Final

import llama_cpp
import orjson
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from contract.formats import ResponseFormat
from contract.tools import Function, ToolCallFormat
from worker.engine import UnsupportedFormat

CACHE_SIZE: Final = 256  # distinct schemas a worker keeps converted
MAX_COUNT: Final = 256  # largest min/maxLength, min/maxItems: the converter unrolls them
ANNOTATIONS: Final = frozenset(
    {"title", "description", "default", "examples", "$schema", "$id", "$comment"}
    | {"deprecated", "readOnly", "writeOnly", "discriminator"}
)
DEFINITIONS: Final = ("$defs", "definitions")
PRIMITIVES: Final = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
STRING_FORMATS: Final = re.compile(r"date|time|date-time|uuid[1-5]?")
# The converter's string character allows raw control characters, which JSON does not.
JSON_CHAR: Final = r'char ::= [^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


def format_gbnf(fmt: ResponseFormat | ToolCallFormat) -> str:
    """The grammar for `fmt`; UnsupportedFormat when its schema cannot be enforced."""
    if isinstance(fmt, ToolCallFormat):
        return tool_calls_gbnf(fmt)
    if fmt.schema is None:
        return JSON_GBNF
    return schema_gbnf(fmt.schema)


@lru_cache(maxsize=CACHE_SIZE)
def schema_gbnf(schema_json: str) -> str:
    """The grammar for a JSON schema (JSON text); UnsupportedFormat for what it cannot say."""
    schema = orjson.loads(schema_json)
    cleaned = _clean(schema, "schema")
    try:
        grammar = json_schema_to_gbnf(orjson.dumps(cleaned).decode())
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        message = f"The JSON schema in 'response_format' cannot be enforced: {exc}"
        raise UnsupportedFormat(message) from None
    lines = [JSON_CHAR if line.startswith("char ::= ") else line for line in grammar.splitlines()]
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=CACHE_SIZE)
def tool_calls_gbnf(fmt: ToolCallFormat) -> str:
    """One `<tool_call>` block (or, if parallel, one or more) holding
    `{"name": ..., "arguments": {...}}` for one of `fmt`'s functions, arguments fit its schema."""
    try:
        grammar = schema_gbnf(orjson.dumps(_calls_schema(fmt.functions)).decode())
    except UnsupportedFormat as exc:
        message = exc.message.replace("JSON schema in 'response_format'", "parameters in 'tools'")
        raise UnsupportedFormat(message, param="tools") from None
    body = re.sub(r"^root ::= ", "tool-call-json ::= ", grammar, count=1, flags=re.M)
    call = r'"<tool_call>\n" tool-call-json "\n</tool_call>"'
    more = f' ("\\n" {call})*' if fmt.parallel else ""
    return f"root ::= {call}{more}\n{body}"


def _calls_schema(functions: tuple[Function, ...]) -> dict[str, Any]:
    """A JSON schema of one call of any of `functions`; their `$defs` move to the top, each
    function's under its own prefix, as local references resolve from the root."""
    defs: dict[str, Any] = {}
    branches = []
    for i, function in enumerate(functions):
        parameters = _prefix_refs(orjson.loads(function.parameters), f"f{i}-")
        for key in DEFINITIONS:
            table = parameters.pop(key, None)
            if isinstance(table, dict):
                defs.update({f"f{i}-{name}": sub for name, sub in table.items()})
            elif table is not None:
                raise UnsupportedFormat(
                    f"The parameters in 'tools' cannot be enforced: '{key}' is not an object.",
                    param="tools",
                )
        branches.append(
            {
                "type": "object",
                "properties": {"name": {"const": function.name}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = branches[0] if len(branches) == 1 else {"anyOf": branches}
    return {**schema, "$defs": defs} if defs else schema


def _prefix_refs(node: Any, prefix: str) -> Any:
    """`node` with its local definition references renamed to `#/$defs/<prefix><name>`."""
    if isinstance(node, list):
        return [_prefix_refs(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _prefix_refs(value, prefix) for key, value in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str):
        for key in DEFINITIONS:
            if ref.startswith(f"#/{key}/"):
                out["$ref"] = f"#/$defs/{prefix}{ref[len(key) + 3 :]}"
    return out


class GrammarCache:
    """Grammars one model's vocabulary has parsed, by response format; any thread."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._parsed: set[str] = set()
        self._lock = threading.Lock()

    def get(self, fmt: ResponseFormat | ToolCallFormat) -> str:
        grammar = format_gbnf(fmt)
        with self._lock:
            if grammar in self._parsed:
                return grammar
        llama_cpp.llama_sampler_free(new_grammar_sampler(self._vocab, grammar))
        with self._lock:
            if len(self._parsed) >= CACHE_SIZE:
                self._parsed.clear()
            self._parsed.add(grammar)
        return grammar


def new_grammar_sampler(vocab: Any, grammar: str) -> Any:
    """A llama.cpp grammar sampler (free it, or the chain that owns it); UnsupportedFormat
    when llama.cpp cannot parse the grammar."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:  # a null pointer
        raise UnsupportedFormat(
            "The schema in 'response_format' gives a grammar llama.cpp refuses."
        )
    return sampler


class TokenCheck:
    """Asks a grammar sampler about one token, without a pass over the whole vocabulary;
    used by one thread at a time."""

    def __init__(self) -> None:
        self._one = llama_cpp.llama_token_data()
        self._array = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False
        )

    def allows(self, grammar: Any, token: int) -> bool:
        """Whether `grammar`, in its current state, lets `token` come next."""
        self._one.id, self._one.logit = llama_cpp.llama_token(token), 0.0
        self._array.size, self._array.selected = 1, -1
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(self._array))
        return bool(self._one.logit != float("-inf"))


def _refuse(at: str, what: str) -> UnsupportedFormat:
    return UnsupportedFormat(
        f"The JSON schema in 'response_format' cannot be enforced: {what} at '{at}'."
    )


def _clean(node: Any, at: str) -> dict[str, Any]:
    """`node` without annotations, its subschemas cleaned; raises for what the converter
    would drop. Mirrors the order in which the converter's `visit` picks a branch."""
    if not isinstance(node, dict):
        raise _refuse(at, "a schema that is not an object")
    out = {k: v for k, v in node.items() if k not in ANNOTATIONS}
    for key in DEFINITIONS:
        if key in out:
            defs = out[key]
            if not isinstance(defs, dict):
                raise _refuse(f"{at}.{key}", "definitions that are not an object")
            out[key] = {name: _clean(sub, f"{at}.{key}.{name}") for name, sub in defs.items()}
    allowed = _branch(out, at)
    extra = sorted(set(out) - allowed - set(DEFINITIONS))
    if extra:
        raise _refuse(at, f"the keyword '{extra[0]}'")
    for key in ("anyOf", "oneOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [_clean(sub, f"{at}.{key}[{i}]") for i, sub in enumerate(out[key])]
    if isinstance(out.get("items"), list):
        out["items"] = [_clean(sub, f"{at}.items[{i}]") for i, sub in enumerate(out["items"])]
    elif isinstance(out.get("items"), dict):
        out["items"] = _clean(out["items"], f"{at}.items")
    if isinstance(out.get("properties"), dict):
        props = out["properties"]
        out["properties"] = {k: _clean(v, f"{at}.properties.{k}") for k, v in props.items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _clean(
            out["additionalProperties"], f"{at}.additionalProperties"
        )
    return out


def _branch(node: dict[str, Any], at: str) -> set[str]:
    """The keywords the converter honours for this node (checking their values)."""
    combined = _combinator(node, at)
    return _typed(node, at) if combined is None else combined


def _combinator(node: dict[str, Any], at: str) -> set[str] | None:
    """The keywords of a reference, union, type list, const or enum node; None for others."""
    kind = node.get("type")
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise _refuse(at, "a reference that is not local ('#/...')")
        return {"$ref"}
    for union in ("oneOf", "anyOf"):
        if union in node:
            if not isinstance(node[union], list) or not node[union]:
                raise _refuse(at, f"'{union}' that is not a non-empty array")
            return {union}
    if isinstance(kind, list):
        if not kind or not all(isinstance(t, str) and t in PRIMITIVES for t in kind):
            raise _refuse(at, "a 'type' list of unknown types")
        return {"type"}
    if "const" in node:
        return {"const", "type"}
    if "enum" in node:
        if not isinstance(node["enum"], list) or not node["enum"]:
            raise _refuse(at, "'enum' that is not a non-empty array")
        return {"enum", "type"}
    return None


def _typed(node: dict[str, Any], at: str) -> set[str]:
    kind = node.get("type")
    if kind in (None, "object") and ("properties" in node or _closed(node)):
        return _object(node, at)
    if kind in (None, "array") and ("items" in node or "prefixItems" in node):
        return _array(node, at)
    if kind in (None, "string") and ("pattern" in node or "format" in node):
        return _string_shape(node, at)
    if kind == "string":
        _counts(node, at, "minLength", "maxLength")
        return {"type", "minLength", "maxLength"}
    if kind == "object":
        return {"type"} | ({"additionalProperties"} if "additionalProperties" in node else set())
    if kind is None:  # {}: any JSON value; otherwise its first keyword is refused
        return {"type"}
    if kind not in PRIMITIVES:
        raise _refuse(at, f"the type {kind!r}")
    return {"type"}


def _string_shape(node: dict[str, Any], at: str) -> set[str]:
    """A string's `pattern` (which wins over any other keyword) or `format`."""
    if "pattern" in node:
        if not isinstance(node["pattern"], str):
            raise _refuse(at, "a 'pattern' that is not a string")
        return {"type", "pattern"}
    fmt = node["format"]
    if not isinstance(fmt, str) or not STRING_FORMATS.fullmatch(fmt):
        raise _refuse(at, f"the string format {fmt!r}")
    return {"type", "format"}


def _closed(node: dict[str, Any]) -> bool:
    return "additionalProperties" in node and node["additionalProperties"] is not True


def _object(node: dict[str, Any], at: str) -> set[str]:
    props = node.get("properties", {})
    if not isinstance(props, dict):
        raise _refuse(at, "'properties' that is not an object")
    extra = node.get("additionalProperties")
    if extra is not None and not isinstance(extra, bool | dict):
        raise _refuse(at, "'additionalProperties' that is neither a boolean nor a schema")
    required = node.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise _refuse(at, "'required' that is not an array of names")
    missing = [name for name in required if name not in props]
    if missing:
        raise _refuse(at, f"the required property '{missing[0]}' missing from 'properties'")
    return {"type", "properties", "required", "additionalProperties"}


def _array(node: dict[str, Any], at: str) -> set[str]:
    items = node.get("items")
    prefix = node.get("prefixItems")
    if prefix is not None or isinstance(items, list):
        fixed = prefix if prefix is not None else items
        if not isinstance(fixed, list) or (prefix is not None and items not in (None, False)):
            raise _refuse(at, "a tuple with extra items")
        for key in ("minItems", "maxItems"):
            if node.get(key, len(fixed)) != len(fixed):
                raise _refuse(at, f"'{key}' on a tuple of {len(fixed)} items")
        return {"type", "prefixItems", "items", "minItems", "maxItems"}
    if not isinstance(items, dict):
        raise _refuse(at, "'items' that is not a schema")
    _counts(node, at, "minItems", "maxItems")
    return {"type", "items", "minItems", "maxItems"}


def _counts(node: dict[str, Any], at: str, low_key: str, high_key: str) -> None:
    low, high = node.get(low_key, 0), node.get(high_key)
    for key, value in ((low_key, low), (high_key, high)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT
        ):
            raise _refuse(at, f"'{key}' that is not an integer from 0 to {MAX_COUNT}")
    if high is not None and high < low:
        raise _refuse(at, f"'{high_key}' below '{low_key}'")
