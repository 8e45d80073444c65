"""stixbus: STIX 2.1 indicator sharing over Kafka, routed by sharing agreements."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
