"""TAXII 2.1 server for subscribers: one read-only collection per subscribing org, backed by
its compacted delivery topic (docs/taxii.md)."""
