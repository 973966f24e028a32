"""The structured-outputs decode benchmark's arithmetic and formats."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="the benchmark imports the llama engines")

from benchmarks.structured import FORMATS, decode_rate


def test_decode_rate_leaves_out_each_streams_first_token() -> None:
    assert decode_rate([(11, 1.0), (21, 1.0)]) == pytest.approx(15.0)
    assert decode_rate([(1, 0.0)]) == 0.0


def test_the_formats_compared() -> None:
    assert FORMATS["free"] is None
    schema = FORMATS["json_schema"]
    assert schema is not None
    assert schema.kind == "json_schema"
    assert schema.schema is not None
    assert '"story"' in schema.schema
    json_object = FORMATS["json_object"]
    assert json_object is not None
    assert json_object.kind == "json_object"
