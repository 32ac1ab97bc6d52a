"""The local staff feed: alert board state, the feed protocol and the server that serves both.

`state` and `protocol` are pure (no I/O); `server` is the trio shell around them. Nothing is
imported here, so importing a pure module does not pull in trio.
"""
