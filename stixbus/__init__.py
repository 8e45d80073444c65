"""stixbus: STIX 2.1 indicator sharing over Kafka, routed by sharing agreements."""
