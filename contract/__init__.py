"""The contract between router and workers: what both sides speak, in one dependency-light place.

    errors     the OpenAI error tree and its rendering
    wire       the chat-completions request (parsing, validation) and the model object
    sse        server-sent-event framing, the end marker and the usage trailer
    registry   the Redis worker registry: key names, record encoding, the operations on them
    telemetry  what both sides' metrics share: status classes and latency buckets
    options    flags and environment variables derived from a frozen config dataclass

It imports neither router nor worker (an import-linter contract in .ci/run keeps it so), and no
web framework: both sides, and any other worker (a registrar beside llama-server), can use it.
"""
