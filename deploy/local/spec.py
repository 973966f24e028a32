"""The stack file (TOML, see deploy/local/stack.toml): parsed once into a frozen StackSpec.

Unknown keys, wrong types, bad ports and two services on one port are rejected with a message that
names the key, before anything starts.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.keyspace import check_prefix

ENGINES = ("llama", "batched", "fake")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class StackError(ValueError):
    """A stack file that cannot be run; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    path: str | None  # a GGUF file or pkg:<package>/<file>; None only for the fake engine
    engine: str = "llama"
    workers: int = 1
    base_port: int = 9001
    metrics_base_port: int = 9101  # worker i serves /metrics on metrics_base_port + i
    n_gpu_layers: int = 0
    args: tuple[str, ...] = ()

    def worker_ids(self) -> list[str]:
        return [f"{self.id}-{i}" for i in range(1, self.workers + 1)]

    def worker_ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.workers)]

    def worker_metrics_ports(self) -> list[int]:
        return [self.metrics_base_port + i for i in range(self.workers)]


@dataclass(frozen=True, slots=True)
class StackSpec:
    models: tuple[ModelSpec, ...]
    redis_port: int = 6390
    redis_exporter_port: int = 9121  # 0: no exporter
    redis_prefix: str = ""  # --redis-prefix of every router, worker and admin call
    router_replicas: int = 1
    router_base_port: int = 8081
    router_metrics_base_port: int = 8181
    router_args: tuple[str, ...] = ()
    router_env: tuple[tuple[str, str], ...] = ()
    nginx_port: int = 8080
    prometheus_port: int = 9090
    scrape_interval_s: float = 5.0

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def router_ports(self) -> list[int]:
        return [self.router_base_port + i for i in range(self.router_replicas)]

    def router_metrics_ports(self) -> list[int]:
        return [self.router_metrics_base_port + i for i in range(self.router_replicas)]

    def total_workers(self) -> int:
        return sum(m.workers for m in self.models)

    def ports(self) -> dict[str, int]:
        """Every service's port, by service name."""
        ports = {
            "redis": self.redis_port,
            "nginx": self.nginx_port,
            "prometheus": self.prometheus_port,
        }
        if self.redis_exporter_port:
            ports["redis-exporter"] = self.redis_exporter_port
        for i, port in enumerate(self.router_ports(), start=1):
            ports[f"router-{i}"] = port
        for i, port in enumerate(self.router_metrics_ports(), start=1):
            ports[f"router-{i} metrics"] = port
        for model in self.models:
            ids = model.worker_ids()
            for worker_id, port in zip(ids, model.worker_ports(), strict=True):
                ports[f"worker-{worker_id}"] = port
            for worker_id, port in zip(ids, model.worker_metrics_ports(), strict=True):
                ports[f"worker-{worker_id} metrics"] = port
        return ports


def load_stack(path: Path) -> StackSpec:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise StackError(f"{path}: cannot read the stack file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise StackError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_stack(data)
    except StackError as exc:
        raise StackError(f"{path}: {exc}") from exc


def parse_stack(data: dict[str, Any]) -> StackSpec:
    _keys(data, "", {"redis", "router", "nginx", "prometheus", "models"})
    redis = _table(data, "redis")
    router = _table(data, "router")
    nginx = _table(data, "nginx")
    prometheus = _table(data, "prometheus")
    _keys(redis, "redis.", {"port", "exporter_port", "prefix"})
    _keys(router, "router.", {"replicas", "base_port", "metrics_base_port", "args", "env"})
    _keys(nginx, "nginx.", {"port"})
    _keys(prometheus, "prometheus.", {"port", "scrape_interval_s"})
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise StackError("[[models]]: at least one model is required")
    models = tuple(_model(m, f"models[{i}].") for i, m in enumerate(raw_models))
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise StackError("[[models]]: model ids must be distinct")
    env = router.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise StackError("router.env: expected a table of strings")
    interval = prometheus.get("scrape_interval_s", 5.0)
    if not isinstance(interval, int | float) or not 0.5 <= interval <= 300:
        raise StackError("prometheus.scrape_interval_s: expected a number from 0.5 to 300")
    spec = StackSpec(
        models=models,
        redis_port=_port(redis, "redis.", "port", 6390),
        redis_exporter_port=_port(redis, "redis.", "exporter_port", 9121, allow_zero=True),
        redis_prefix=_prefix(redis),
        router_replicas=_int(router, "router.", "replicas", 1, low=1, high=16),
        router_base_port=_port(router, "router.", "base_port", 8081),
        router_metrics_base_port=_port(router, "router.", "metrics_base_port", 8181),
        router_args=_strings(router, "router.", "args"),
        router_env=tuple(sorted(env.items())),
        nginx_port=_port(nginx, "nginx.", "port", 8080),
        prometheus_port=_port(prometheus, "prometheus.", "port", 9090),
        scrape_interval_s=float(interval),
    )
    seen: dict[int, str] = {}
    for name, port in spec.ports().items():
        if not 1 <= port <= 65535:
            raise StackError(f"{name}: port {port} is out of range")
        if port in seen:
            raise StackError(f"{seen[port]} and {name} both want port {port}")
        seen[port] = name
    return spec


def _model(raw: Any, where: str) -> ModelSpec:
    if not isinstance(raw, dict):
        raise StackError(f"{where[:-1]}: expected a table")
    known = {"id", "path", "engine", "workers", "base_port", "metrics_base_port", "n_gpu_layers"}
    _keys(raw, where, known | {"args"})
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
        raise StackError(f"{where}id: expected a model id of letters, digits, '.', '_' or '-'")
    engine = raw.get("engine", "llama")
    if engine not in ENGINES:
        raise StackError(f"{where}engine: expected one of {', '.join(ENGINES)}")
    path = raw.get("path")
    if path is not None and not isinstance(path, str):
        raise StackError(f"{where}path: expected a string")
    if path is None and engine != "fake":
        raise StackError(f"{where}path: required for the {engine} engine")
    return ModelSpec(
        id=model_id,
        path=path,
        engine=engine,
        workers=_int(raw, where, "workers", 1, low=1, high=64),
        base_port=_port(raw, where, "base_port", 9001),
        metrics_base_port=_port(raw, where, "metrics_base_port", 9101),
        n_gpu_layers=_int(raw, where, "n_gpu_layers", 0, low=-1, high=10_000),
        args=_strings(raw, where, "args"),
    )


def _prefix(redis: dict[str, Any]) -> str:
    value = redis.get("prefix", "")
    try:
        return check_prefix(value) if isinstance(value, str) else check_prefix("*")
    except ValueError as exc:
        raise StackError(f"redis.prefix: {str(exc).removeprefix('redis_prefix: ')}") from None


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise StackError(f"[{key}]: expected a table")
    return value


def _keys(data: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise StackError(f"unknown key {where}{unknown[0]} (known: {', '.join(sorted(allowed))})")


def _int(data: dict[str, Any], where: str, key: str, default: int, *, low: int, high: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StackError(f"{where}{key}: expected an integer from {low} to {high}")
    return value


def _port(
    data: dict[str, Any], where: str, key: str, default: int, *, allow_zero: bool = False
) -> int:
    return _int(data, where, key, default, low=0 if allow_zero else 1, high=65535)


def _strings(data: dict[str, Any], where: str, key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise StackError(f"{where}{key}: expected a list of strings")
    return tuple(value)
