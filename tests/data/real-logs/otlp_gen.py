"""Real OTLP log export requests from the OpenTelemetry Python SDK: protobuf as its
OTLP/HTTP exporter sends them, and OTLP/JSON (one request per line, as the Collector's
file exporter writes)."""

import base64
import json
import logging

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource


def requests() -> list[bytes]:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider(
        resource=Resource.create(
            {
                "service.name": "checkout",
                "service.instance.id": "checkout-7f9c",
                "host.name": "web-1",
            }
        )
    )
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = logging.getLogger("orders")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(LoggingHandler(logger_provider=provider))
    logger.info("order placed", extra={"order.id": "o-1", "amount": 12.5, "items": 3})
    logger.warning("payment slow", extra={"log.record.uid": "01J9Z8Q6P5T4R3", "elapsed_ms": 1480})
    for _ in range(2):  # two identical records: two events
        logger.error("retrying")
    first = encode_logs(exporter.get_finished_logs()).SerializeToString()
    exporter.clear()
    logging.getLogger("orders").info("invoice sent", extra={"invoice": 17})
    second = encode_logs(exporter.get_finished_logs()).SerializeToString()
    return [first, second]


def as_otlp_json(data: bytes) -> dict:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    request.ParseFromString(data)
    doc = MessageToDict(request, use_integers_for_enums=True)
    for rl in doc.get("resourceLogs", []):  # OTLP/JSON writes ids as hex, not base64
        for sl in rl.get("scopeLogs", []):
            for record in sl.get("logRecords", []):
                for name in ("traceId", "spanId"):
                    if name in record:
                        record[name] = base64.b64decode(record[name]).hex()
    return doc


if __name__ == "__main__":
    bodies = requests()
    with open("otlp-logs.jsonl", "w") as out:
        for body in bodies:
            out.write(json.dumps(as_otlp_json(body), separators=(",", ":")) + "\n")
    with open("otlp-logs.pb", "wb") as out:
        out.write(bodies[0])
