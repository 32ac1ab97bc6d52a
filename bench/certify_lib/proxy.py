"""A TCP proxy on loopback that cuts connections at random: the "uplink flaps" of certify.py.

    python bench/certify_lib/proxy.py TARGET_PORT --seed N [--min-s 0.3] [--max-s 3.0]

Prints the port it listens on (127.0.0.1, any free port), then forwards every connection to
127.0.0.1:TARGET_PORT byte for byte (TLS passes through untouched). While flapping, each
connection is cut after a random lifetime (uniform between --min-s and --max-s): both sides are
closed abruptly, mid-frame if that is where the bytes are. SIGUSR1 stops the flapping (live
connections stay up from then on); SIGINT/SIGTERM print one JSON line of counters and exit.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import signal
import socket
import sys

import trio


class Proxy:
    def __init__(self, target_port: int, rng: random.Random, min_s: float, max_s: float):
        self.target_port = target_port
        self.rng = rng
        self.min_s, self.max_s = min_s, max_s
        self.flapping = True
        self.stop_flapping = trio.Event()
        self.connections = 0
        self.cuts = 0
        self.bytes = 0

    async def handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        lifetime = self.rng.uniform(self.min_s, self.max_s)
        cut = False
        async with client, upstream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
                if self.flapping:
                    with trio.move_on_after(lifetime) as timer:
                        await self.stop_flapping.wait()
                    if timer.cancelled_caught:
                        cut = True
                        nursery.cancel_scope.cancel()
            if cut:
                self.cuts += 1
                for stream in (client, upstream):
                    # RST rather than FIN on close: the peer sees the link die, as on a real cut.
                    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                             b"\x01\x00\x00\x00\x00\x00\x00\x00")

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream,
                    scope: trio.CancelScope) -> None:
        try:
            async for chunk in src:
                self.bytes += len(chunk)
                await dst.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()


async def main(args: argparse.Namespace) -> None:
    proxy = Proxy(args.target_port, random.Random(args.seed), args.min_s, args.max_s)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1"))
            print(listeners[0].socket.getsockname()[1], flush=True)
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    proxy.flapping = False
                    proxy.stop_flapping.set()
                    continue
                break
            nursery.cancel_scope.cancel()
    print(json.dumps({"connections": proxy.connections, "cuts": proxy.cuts,
                      "bytes": proxy.bytes}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target_port", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-s", type=float, default=0.3)
    parser.add_argument("--max-s", type=float, default=3.0)
    trio.run(main, parser.parse_args())
    sys.exit(0)
