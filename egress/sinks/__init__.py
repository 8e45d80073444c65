"""The network sinks: RPZ zones, firewall lists, Suricata/Zeek files, a MISP feed.

See docs/sinks.md; the pure renderers are in stixbus/core/sinks/."""
