"""The uplink conformance kit: drives a platform endpoint as a gateway would and reports each
`P-` rule of docs/uplink-protocol.md as PASS, FAIL or SKIP (`casino-gateway conformance`)."""

from gateway.conformance.run import Result, run_kit

__all__ = ["Result", "run_kit"]
