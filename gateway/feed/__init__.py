"""The local staff feed: alert board state, the feed protocol and the server that serves both.

`state` and `protocol` are pure (no I/O); `server` is the trio shell around them, with one module
per job: `http` (connections, routing, static files), `session` (one WebSocket client), `fanout`
(commits to every client), `metrics`, `guard` (connection caps) and `settings`. Nothing is
imported here, so importing a pure module does not pull in trio.
"""
