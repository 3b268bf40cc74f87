"""Delivery: the transactional outbox, dispatchers, signed webhooks with retries, channel
adapters (webhook, email, SMS, push, WeChat, WeCom) and call lists. See docs/delivery.md.

Producers call ``enqueue`` inside their own transaction; receivers of webhooks call ``verify``.
"""

from rapport.delivery.errors import DeliveryError, TargetRefused
from rapport.delivery.outbox import enqueue
from rapport.delivery.webhook import verify

__all__ = ["DeliveryError", "TargetRefused", "enqueue", "verify"]
