"""CERT publishing connectors: TAXII 2.1 pull, MISP feed, blocklists, TAXII 2.1 inbox.

Each turns a source into ordinary submissions on `stixbus.ingest.<org>`; see docs/connectors.md.
"""
