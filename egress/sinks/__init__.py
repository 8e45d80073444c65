"""The network sinks: RPZ zones, firewall lists, Suricata/Zeek files, a MISP feed (docs/sinks.md)."""
