"""The reference platform endpoint (sandbox / certification peer for the uplink).

`serve_receiver(ReceiverSettings(...), task_status=...)` starts it and hands back a
`ReceiverHandle` (`.port`, `.url`, `.store` (the SQLite store; None when
`ReceiverSettings.jetstream` puts the receiver on NATS JetStream, docs/platform.md),
`await .submit_command(...)`, `await .wait_command(id)`);
`ReceiverStore.figures()` gives its counters, `ReceiverStore.commands()` the commands sent to
gateways and their results.
"""

from gateway.receiver.server import ReceiverHandle, ReceiverSettings, serve_receiver
from gateway.receiver.store import ReceiverStore

__all__ = ["ReceiverHandle", "ReceiverSettings", "ReceiverStore", "serve_receiver"]
