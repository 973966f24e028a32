"""Chat templates rendered as Hugging Face's apply_chat_template renders them."""

from __future__ import annotations

import pytest

from worker.chat_template import (
    CHATML_TEMPLATE,
    TemplateError,
    compile_template,
    raise_template_error,
    strftime_now,
)

pytest.importorskip("jinja2", reason="needs jinja2 (the llama extra)")


def test_the_chatml_fallback_renders_turns_and_the_generation_prompt() -> None:
    text = compile_template(CHATML_TEMPLATE).render(
        messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tojson_keeps_non_ascii_and_does_not_escape_html() -> None:
    template = compile_template("{{ value | tojson }}|{{ value | tojson(indent=1) }}")
    assert template.render(value={"a": "é<b>"}) == '{"a": "é<b>"}|{\n "a": "é<b>"\n}'


def test_generation_tags_pass_their_body_through() -> None:
    template = compile_template("a{% generation %}b{% endgeneration %}c")
    assert template.render() == "abc"


def test_a_template_refuses_through_raise_exception() -> None:
    template = compile_template("{{ raise_exception('no system role') }}")
    with pytest.raises(TemplateError, match="no system role"):
        template.render(raise_exception=raise_template_error)
    assert len(strftime_now("%Y")) == 4
