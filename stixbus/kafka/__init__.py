"""Kafka plumbing: client options, admin, topics, ACLs, lag, the consumer client."""
