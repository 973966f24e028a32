"""The real engine: one GGUF model through llama-cpp-python, one inference thread.

Everything that blocks (model load, template rendering, tokenisation, decoding) runs on the
engine's single worker thread; text comes back to the event loop through
`loop.call_soon_threadsafe` into an asyncio.Queue. The thread checks a per-request
threading.Event before every token, so a consumer that goes away stops generation at the next
token and the thread is free for the next request.

Generation is driven here rather than through `create_chat_completion` so that:
- the prompt is the model's own chat template (GGUF `tokenizer.chat_template`), rendered the way
  llama-cpp-python's Jinja2ChatFormatter and Hugging Face's apply_chat_template do, and
  tokenised with the template's special tokens parsed but not the request's (worker.specials)
  and BOS added only if the model asks for it (once);
- usage is exact: prompt tokens are the tokens evaluated, completion tokens every token sampled
  (an end-of-generation token included, since it cost a decode step);
- multi-byte UTF-8 split across tokens is decoded incrementally, never emitted half-formed;
- stop strings are matched with hold-back (worker.stops), and never emitted.

Sampling follows OpenAI's knobs only: temperature (0 = greedy), top_p, presence and frequency
penalties, seed; llama.cpp's extra filters (top_k, min_p, repeat penalty) are switched off.
A `response_format` adds a grammar (worker.grammar) to the sampler chain, so only tokens that
keep the answer valid JSON (of the schema) can be drawn; forced tool calls arrive the same way
(a ToolCallFormat), and offered tools enter the prompt through worker.tools.
The context keeps what the last request left in it: the next one reuses the longest token
prefix it shares with that (only the rest is evaluated; `Finished.cached_tokens` counts the
reused), and `cached_prefixes()` names that prompt by its contract.prefixes digest. A seeded
request evaluates from scratch (below). With `ignore_eos` (benchmarks) an end-of-generation
token is counted as any other, so an answer runs to its max_tokens.
`logit_bias` and logprobs go through a logits processor (worker.logprobs.LogitsHook), the
first link of Llama's sampler chain, present only when a request asks for either: plain
requests keep llama-cpp-python's own chain untouched.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import threading
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from contract.formats import ResponseFormat
from contract.tools import ToolCallFormat, Tools
from contract.wire import SamplingParams
from worker.chat_template import (
    CHATML_TEMPLATE,
    TemplateError,
    compile_template,
    raise_template_error,
    strftime_now,
)
from worker.engine import (
    EngineStopped,
    Failure,
    Finished,
    FinishReason,
    InvalidPrompt,
    Item,
    OnPrompt,
    Output,
    Prompt,
    check_logit_bias,
    check_prompt,
    completion_limit,
    prompt_prefix,
    relay,
    with_default_length,
)
from worker.logprobs import LogitsHook, Logprobs, token_logprob
from worker.specials import ControlTokens, pieces
from worker.stops import StopMatcher
from worker.tools import generic_chat, native_chat, template_knows_tools

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

logger = logging.getLogger(__name__)

LLAMA_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp: pick a random seed


class LlamaEngine:
    slots: Final = 1  # one stream at a time; see the batched engine for more

    def __init__(
        self,
        model_path: str,
        *,
        n_ctx: int,
        n_gpu_layers: int,
        n_threads: int | None,
        default_max_tokens: int | None = None,
        ignore_eos: bool = False,
    ) -> None:
        self._model_path = model_path
        self._ignore_eos = ignore_eos
        self.n_ctx = n_ctx
        self._default_max_tokens = default_max_tokens  # None: until end of generation
        self._n_gpu_layers = n_gpu_layers
        self._n_threads = n_threads
        # One thread: llama.cpp contexts are not thread-safe, and it serialises requests.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._llm: Llama | None = None
        self._model: ChatPrompt | None = None
        self.device = "cpu"
        self._active: set[threading.Event] = set()
        self._failure = Failure()

    @property
    def failure(self) -> Failure:
        return self._failure

    def cached_prefixes(self) -> tuple[str, ...]:
        """The digest of the chat prompt the context holds, if it holds a named one."""
        model = self._model
        return () if model is None else model.cached

    def kv_cells(self) -> tuple[int, int] | None:
        """(cells in use, cells in all): the tokens its one context holds, the prompt cache
        included. An int read, safe beside the inference thread (worker.metrics scrapes it)."""
        llm = self._llm
        return None if llm is None else (llm.n_tokens, self.n_ctx)

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        for cancel in list(self._active):
            cancel.set()
        llm, self._llm, self._model = self._llm, None, None
        if llm is not None:
            # Queued behind any generation still running, which stops at its next token.
            await asyncio.get_running_loop().run_in_executor(self._executor, llm.close)
        self._executor.shutdown(wait=False)

    async def stream(
        self, prompt: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[Output]:
        model = self._model
        if model is None or self._failure.reason is not None:
            raise EngineStopped()
        params = with_default_length(params, self._default_max_tokens)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Item] = asyncio.Queue()
        cancel = threading.Event()

        def call(function: Callable[[Any], None], arg: Any) -> None:
            try:
                # In order: on_prompt runs before the first output is queued.
                loop.call_soon_threadsafe(function, arg)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        run = Run(
            emit=lambda item: call(queue.put_nowait, item),
            cancel=cancel,
            failure=self._failure,
            on_prompt=None if on_prompt is None else lambda n: call(on_prompt, n),
        )
        self._active.add(cancel)
        try:
            loop.run_in_executor(self._executor, model.run, prompt, params, run)
            async with aclosing(relay(queue, cancel)) as outputs:
                async for item in outputs:
                    yield item
        finally:
            self._active.discard(cancel)

    def _load(self) -> None:
        import llama_cpp

        kwargs: dict[str, Any] = {}
        if self._n_threads is not None:
            kwargs.update(n_threads=self._n_threads, n_threads_batch=self._n_threads)
        llm = llama_cpp.Llama(
            model_path=self._model_path,
            n_ctx=self.n_ctx,
            n_gpu_layers=self._n_gpu_layers,
            verbose=False,
            **kwargs,
        )
        # llama.cpp may round the context up, but llama-cpp-python sizes its buffers to the
        # requested n_ctx, so the smaller of the two is the real limit.
        self.n_ctx = min(self.n_ctx, llm.n_ctx())
        if self._n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload():
            self.device = "gpu"
        self._llm = llm
        self._model = ChatPrompt(llm, self.n_ctx, ignore_eos=self._ignore_eos)


@dataclass(frozen=True, slots=True)
class Run:
    """How one request's run on the engine thread reports back to the event loop."""

    emit: Callable[[Item], None]
    cancel: threading.Event
    failure: Failure
    on_prompt: Callable[[int], None] | None


class ChatPrompt:
    """The loaded model's chat template and tokenizer; used only on the engine thread."""

    def __init__(self, llm: Llama, n_ctx: int, *, ignore_eos: bool = False) -> None:
        import jinja2
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        from worker.grammar import GrammarCache

        self._llm = llm
        self._lib = llama_cpp
        self._vocab = llm._model.vocab
        self._grammars = GrammarCache(self._vocab)
        self._new_grammar = LlamaGrammar.from_string
        self._n_ctx = n_ctx
        self._bos = llm.token_bos()
        self._add_bos = bool(llm._model.add_bos_token()) and self._bos != -1
        bos_text = llm._model.token_get_text(self._bos) if self._bos != -1 else ""
        eos = llm.token_eos()
        eos_text = llm._model.token_get_text(eos) if eos != -1 else ""
        template_source = llm.metadata.get("tokenizer.chat_template")
        if not template_source:
            logger.warning("the model has no chat template; using ChatML")
            template_source = CHATML_TEMPLATE
        self._template = compile_template(template_source)
        self._native_tools = template_knows_tools(template_source)
        self._template_errors = (TemplateError, jinja2.TemplateError)
        self._template_globals = {"bos_token": bos_text, "eos_token": eos_text}
        self._controls = ControlTokens.of_vocab(self._vocab, llm.n_vocab())
        self._piece_buffer = ctypes.create_string_buffer(256)
        self._n_vocab = llm.n_vocab()
        self._ignore_eos = ignore_eos
        # The digest of the chat prompt the context holds (read from the event loop): set once
        # a prompt is evaluated, cleared while the context is being rewritten.
        self.cached: tuple[str, ...] = ()

    def prompt_tokens(self, messages: Prompt, tools: Tools | None = None) -> list[int]:
        """The rendered, tokenised prompt; `tools` go through the template when it knows
        tools, else through a generic tool prompt (worker.tools). Control-token text in the
        request stays plain text (worker.specials). A raw text prompt is tokenised as it is,
        special tokens included, as llama-server does."""
        if isinstance(messages, str):
            return self._tokenize(messages)
        extra: dict[str, Any] = {}
        chat: Sequence[dict[str, Any]]
        if self._native_tools:
            chat, tool_list = native_chat(messages, tools)
            if tool_list is not None:
                extra["tools"] = tool_list
        else:
            chat = generic_chat(messages, tools)
        marked: list[str] = []
        chat, extra = self._controls.mark(chat, marked), self._controls.mark(extra, marked)
        try:
            prompt = self._template.render(
                messages=chat,
                **extra,
                add_generation_prompt=True,
                raise_exception=raise_template_error,
                strftime_now=strftime_now,
                **self._template_globals,
            )
        except self._template_errors as exc:
            message = f"The model's chat template rejected these messages: {exc}"
            raise InvalidPrompt(message) from None
        tokens = self._tokenize_marked(prompt, marked) if marked else self._tokenize(prompt)
        # A template that writes {{ bos_token }} itself plus add_bos would double it.
        if self._add_bos and tokens[:2] == [self._bos, self._bos]:
            del tokens[0]
        return tokens

    def _tokenize(self, text: str, *, special: bool = True, bos: bool = True) -> list[int]:
        tokens: list[int] = self._llm.tokenize(
            text.encode("utf-8"), add_bos=bos and self._add_bos, special=special
        )
        return tokens

    def _tokenize_marked(self, rendered: str, marked: list[str]) -> list[int]:
        """The template's text with its special tokens, the marked request text without."""
        tokens = [self._bos] if self._add_bos else []
        for text, special in pieces(rendered, marked):
            tokens += self._tokenize(text, special=special, bos=False)
        return tokens

    def grammar(self, fmt: ResponseFormat | ToolCallFormat | None) -> str | None:
        """The GBNF grammar `fmt` asks for, None for free text; raises UnsupportedFormat."""
        return None if fmt is None else self._grammars.get(fmt)

    def run(self, messages: Prompt, params: SamplingParams, run: Run) -> None:
        """The whole request, on the engine thread; every outcome goes through `run.emit`.
        A failure while generating is the engine's own: the context may hold a partial
        write, so the engine is marked failed rather than trusted with the next request."""
        try:
            if run.cancel.is_set():
                return
            if run.failure.reason is not None:  # queued behind the generation that failed
                raise EngineStopped("The engine failed.")
            grammar = self.grammar(params.response_format)
            prompt = self.prompt_tokens(messages, params.tools)
            check_prompt(len(prompt), self._n_ctx)
            check_logit_bias(params, self._n_vocab)
            constraint = None if grammar is None else self._new_grammar(grammar)
        except Exception as exc:
            run.emit(exc)
            return
        if run.on_prompt is not None:
            run.on_prompt(len(prompt))
        try:
            held = prompt_prefix(messages)
            finished = self._generate(prompt, params, constraint, run, held)
        except Exception as exc:
            logger.exception("generation failed; the engine cannot be trusted any more")
            run.failure.set(f"generation failed: {exc}")
            run.emit(EngineStopped("The engine failed."))
            return
        if finished is not None:
            run.emit(finished)

    def _reuse(self, prompt: list[int]) -> int:
        """Keep the longest prefix of `prompt` the context holds, less its last token (whose
        logits the first sample needs); drop the rest. Returns how many tokens were kept."""
        llm = self._llm
        common = 0
        for held, token in zip(llm.input_ids[: llm.n_tokens].tolist(), prompt, strict=False):
            if held != token:
                break
            common += 1
        keep = min(common, len(prompt) - 1)
        if keep > 0 and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep
            return keep
        llm.reset()  # type: ignore[no-untyped-call]
        return 0

    def _generate(
        self,
        prompt: list[int],
        params: SamplingParams,
        grammar: LlamaGrammar | None,
        run: Run,
        held: str | None,
    ) -> Finished | None:
        llm = self._llm
        emit, cancel = run.emit, run.cancel
        limit = completion_limit(self._n_ctx, len(prompt), params.max_tokens)
        if params.seed is None:
            llm.set_seed(LLAMA_DEFAULT_SEED)
        else:
            llm.set_seed(params.seed & 0xFFFFFFFF)
            # Reusing a cached prompt prefix evaluates fewer tokens per batch, which shifts the
            # logits by rounding noise; a seeded request evaluates from scratch to repeat exactly.
            llm.reset()  # type: ignore[no-untyped-call]
        self.cached = ()
        cached = self._reuse(prompt)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopMatcher(params.stop)
        reason: FinishReason = "length"
        count = 0
        hook = LogitsHook.of(params)
        tokens = self._tokens(prompt[cached:], params, grammar, hook)
        try:
            for token in tokens:
                if cancel.is_set():
                    return None
                if not count:  # the prompt is in the context now
                    self.cached = () if held is None else (held,)
                count += 1
                if not self._ignore_eos and self._lib.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                if hook is not None and hook.row is not None and params.top_logprobs is not None:
                    entry = token_logprob(
                        hook.row, token, params.top_logprobs, self.piece, params.logit_bias
                    )
                    emit(Logprobs((entry,)))
                text, stopped = matcher.feed(decoder.decode(self.piece(token)))
                if text:
                    emit(text)
                if stopped:
                    return Finished("stop", len(prompt), count, cached)
                if count >= limit:
                    break
        finally:
            tokens.close()
        # Release a held-back partial stop string. A character cut in half by the token limit
        # stays in the decoder: half a character is not text.
        text = matcher.flush()
        if text:
            emit(text)
        return Finished(reason, len(prompt), count, cached)

    def _tokens(
        self,
        prompt: list[int],
        params: SamplingParams,
        grammar: LlamaGrammar | None,
        hook: LogitsHook | None,
    ) -> Generator[int, Sequence[int] | None, None]:
        """Llama's token generator with OpenAI's knobs only (see the module docstring)."""
        from llama_cpp import LogitsProcessorList

        return self._llm.generate(
            prompt,
            top_k=0,
            top_p=params.top_p,
            min_p=0.0,
            typical_p=1.0,
            temp=params.temperature,
            repeat_penalty=1.0,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            logits_processor=None if hook is None else LogitsProcessorList([hook]),
            grammar=grammar,
            reset=False,  # _reuse has set the context up
        )

    def piece(self, token: int) -> bytes:
        """The bytes of `token`'s text; on one thread at a time (the buffer is shared)."""
        buffer = self._piece_buffer
        n = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if n < 0:  # the piece is longer than the buffer: grow it once and retry
            buffer = self._piece_buffer = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:n]
