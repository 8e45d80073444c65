"""One plain-words, rate-limited log line while the Kafka broker is unreachable.

With the broker away, aiokafka (under Faust) logs hundreds of ERROR lines a second ("Unable
connect to node with id 1", "NodeNotReadyError", "Unable to update metadata") and none says
what is wrong.  `BrokerOutageFilter` sits on every aiokafka logger of the worker process: it
drops those records and lets one through at most every `interval` seconds, rewritten to say
the broker is unreachable, how many client errors were folded into it, and what to check.
Other records pass untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

# Substrings of aiokafka's messages that mean "no connection to the broker".
OUTAGE_MARKERS = (
    "Connect call failed",
    "Unable connect to",
    "Unable to bootstrap",
    "Unable to update metadata",
    "NodeNotReadyError",
    "KafkaConnectionError",
    "Marking the coordinator dead",
    "coordinator dead",
    "Connection at ",
)


class BrokerOutageFilter(logging.Filter):
    def __init__(
        self,
        servers: str,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.servers, self.interval, self.clock = servers, interval, clock
        self.suppressed = 0
        self.since: float | None = None  # first outage record of the current report window
        self.last_report: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not _is_outage(record):
            return True
        now = self.clock()
        if self.since is None:
            self.since = now
        if self.last_report is not None and now - self.last_report < self.interval:
            self.suppressed += 1
            return False
        folded = self.suppressed + 1
        seconds = now - (self.last_report if self.last_report is not None else self.since)
        record.msg = (
            "Kafka broker unreachable at %s (%d Kafka client error(s) in %.0f s folded into this "
            "line): the worker keeps retrying and resumes by itself when the broker answers; "
            "check that the broker runs (deploy/kafka/kafka.sh status) and "
            "STIXBUS_BOOTSTRAP_SERVERS"
        )
        record.args = (self.servers, folded, seconds)
        record.levelno, record.levelname = logging.ERROR, "ERROR"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        self.suppressed, self.last_report = 0, now
        return True


def _is_outage(record: logging.LogRecord) -> bool:
    try:
        text = record.getMessage()
    except Exception:  # a malformed record is not ours to judge
        return False
    if record.exc_info and record.exc_info[1] is not None:
        text += f" {type(record.exc_info[1]).__name__}"
    return any(marker in text for marker in OUTAGE_MARKERS)


def install(servers: str, interval: float) -> BrokerOutageFilter:
    """Put one filter on every aiokafka logger that exists (call after importing faust, which
    imports aiokafka's modules); records are filtered by the logger that creates them."""
    import aiokafka.cluster
    import aiokafka.conn
    import aiokafka.consumer.fetcher
    import aiokafka.consumer.group_coordinator
    import aiokafka.producer.sender  # noqa: F401

    outage = BrokerOutageFilter(servers, interval)
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "aiokafka"]
    for name in ["aiokafka", *names]:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, BrokerOutageFilter)]:
            logger.removeFilter(old)
        logger.addFilter(outage)
    return outage
