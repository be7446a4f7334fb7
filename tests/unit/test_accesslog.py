import io
import json

from kubegate.gateway.accesslog import AccessLogWriter
from kubegate.planes.proxy.server import AccessRecord

RECORD = AccessRecord(
    client="127.0.0.1",
    method="GET",
    path="/foo?x=1",
    host="foo.bar.com",
    status=200,
    bytes=379,
    duration=0.00202,
    upstream="127.0.0.1:9001",
)


def test_text_lines_carry_status_bytes_upstream_and_duration() -> None:
    out = io.BytesIO()
    writer = AccessLogWriter("text", out)
    writer(RECORD)
    writer.flush()
    line = out.getvalue().decode()
    assert line.endswith("\n") and line.count("\n") == 1
    assert '"GET /foo?x=1" 200 379' in line
    assert 'upstream="127.0.0.1:9001"' in line
    assert "duration=2.02ms" in line


def test_json_lines_parse_and_batch_until_flushed() -> None:
    out = io.BytesIO()
    writer = AccessLogWriter("json", out)
    writer(RECORD)
    writer(RECORD)
    # outside an event loop each record is written at once; inside one, they batch on a timer
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 2
    entry = json.loads(lines[0])
    assert entry["status"] == 200 and entry["upstream"] == "127.0.0.1:9001" and entry["bytes"] == 379


async def test_inside_the_event_loop_lines_wait_for_the_flush_timer() -> None:
    out = io.BytesIO()
    writer = AccessLogWriter("text", out)
    writer(RECORD)
    assert out.getvalue() == b""
    writer.flush()
    assert out.getvalue().count(b"\n") == 1


def test_a_closed_stream_drops_lines_instead_of_raising() -> None:
    out = io.BytesIO()
    writer = AccessLogWriter("text", out)
    out.close()
    writer(RECORD)
    writer.flush()
    assert writer.dropped == 1
