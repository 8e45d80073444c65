"""What subscribers pull: the TAXII 2.1 server (egress/taxii/) and the sink lists (egress/sinks/).

Same layer as agents and connectors, independent of both; pure parts live in stixbus/core/."""
