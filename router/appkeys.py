"""Typed keys for what the app and each request carry; the one place they are declared."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from router.access import Access
from router.admission import Admission
from router.balancer import Policy
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.proxy import Relay
from router.view import RegistryView

CONFIG = web.AppKey("config", RouterConfig)
METRICS = web.AppKey("metrics", RouterMetrics)
VIEW = web.AppKey("registry_view", RegistryView)
POLICY: web.AppKey[Policy] = web.AppKey("policy")
REDIS: web.AppKey[Redis[bytes]] = web.AppKey("redis")
RELAY = web.AppKey("relay", Relay)
ADMISSION = web.AppKey("admission", Admission)
ACCESS = web.AppKey("access", Access)

REQUEST_ID = web.RequestKey("request_id", str)
