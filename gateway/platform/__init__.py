"""The platform side at fleet scale: the receiver's JetStream backend, its KV layout and the
`casino-gateway platform` tools (docs/platform.md). Needs the `[platform]` extra (nats-py); a
venue box never installs it, and nothing here is imported until a platform command runs."""
