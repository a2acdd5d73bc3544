"""Real structlog and python-json-logger output for logagg's tests, in a UTC+1 zone."""

import logging
import os
import time

os.environ["TZ"] = "Europe/Berlin"
time.tzset()

import structlog  # noqa: E402
from pythonjsonlogger import jsonlogger  # noqa: E402

# structlog: TimeStamper(utc=False) writes naive local ISO times; 10 health checks at
# second resolution, so identical lines repeat.
with open("structlog-local.jsonl", "w") as out:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S", utc=False),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=out),
    )
    log = structlog.get_logger("health")
    for _ in range(10):
        log.info("health check", status="ok")
    log.info("with app fields", event_id="evt-3", source="probe")

# python-json-logger with asctime ("2026-11-28 11:40:52,082"): local time, no offset.
handler = logging.FileHandler("jsonlogger-asctime.jsonl", mode="w")
handler.setFormatter(jsonlogger.JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
logger = logging.getLogger("billing")
logger.addHandler(handler)
logger.setLevel(logging.INFO)
logger.info("invoice sent", extra={"invoice": 17})
logger.warning("invoice overdue", extra={"invoice": 18})
