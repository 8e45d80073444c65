"""Pure core: no I/O, asyncio, Kafka, HTTP or environment reading (docs/architecture.md)."""
