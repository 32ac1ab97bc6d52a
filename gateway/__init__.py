"""casino-edge-gateway: SAS slot machines in, signed durable events out to the platform."""

__version__ = "0.1.0"
