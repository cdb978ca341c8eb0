"""Channels: how a rendered message leaves (e-mail, webhook, SMS, WeChat, the outbox table).

Only transport lives here. Consent, quiet hours, frequency caps, rate limits and the delivery
ledger are decided before a channel is called.
"""

from activities.channels.base import (
    Channel,
    OutgoingMessage,
    PermanentSendError,
    SendError,
    SendResult,
    SyncChannel,
    TransientSendError,
    build_channels,
)

__all__ = [
    "Channel",
    "OutgoingMessage",
    "PermanentSendError",
    "SendError",
    "SendResult",
    "SyncChannel",
    "TransientSendError",
    "build_channels",
]
