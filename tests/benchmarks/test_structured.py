"""The structured-outputs decode benchmark's arithmetic and formats."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="the benchmark imports the llama engines")

from benchmarks.structured import CLI, FORMATS, decode_rate, render_markdown


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


def test_the_cli_takes_its_parameters_and_the_shared_flags() -> None:
    params, args, _ = CLI.parse(["--requests", "2", "--concurrency", "4", "--smoke"])
    assert (params.requests, params.concurrency, params.max_tokens) == (2, 4, 200)
    assert args.smoke
    with pytest.raises(SystemExit):
        CLI.parse(["--requests", "0"])


def test_the_report_marks_each_constrained_row_against_the_target() -> None:
    meta = {"machine": {"cpu_model": "cpu", "nproc": 2}, "git": {"head": "abc", "dirty": False}}
    data = {
        "metadata": meta | {"date": "d", "command": "c"},
        "parameters": {"threads": 1, "max_tokens": 9, "requests": 1, "concurrency": 2},
        "rows": [
            {
                "engine": "llama",
                "streams": 1,
                "format": "free",
                "tokens_per_s": 80.0,
                "vs_free": 1.0,
            },
            {"engine": "llama", "streams": 1, "format": "json_object", "tokens_per_s": 40.0}
            | {"vs_free": 0.5},
            {"engine": "batched", "streams": 1, "format": "json_schema", "tokens_per_s": 72.0}
            | {"vs_free": 0.9},
        ],
    }
    rows = [line for line in render_markdown(data).splitlines() if line.startswith("| llama")]
    rows += [line for line in render_markdown(data).splitlines() if line.startswith("| batched")]
    assert rows[0].endswith("| 1.00x |  |")
    assert rows[1].endswith("| 0.50x | not met |")
    assert rows[2].endswith("| 0.90x | met |")
