"""Hostile connections: slow senders, lying lengths, endless bodies and too many connections are closed
or refused with retry advice, counted, and the service keeps serving everyone else."""

from __future__ import annotations

import http.client
import select
import socket
import time
from contextlib import closing

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from support.otlp_proto import make_request, make_span
from support.sdk_agent import chat_attributes
from support.service import service_body

OTLP_TOKEN = "otlp-token-0123456789abcdef0123456789"

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
CLOSED = "agentopz_http_connections_closed_total"
TIMEOUTS = {"read_header_timeout_seconds": 1, "read_body_timeout_seconds": 1.5, "idle_timeout_seconds": 1}


def guarded_body(http: dict | None = None, admin: dict | None = None, **receiver) -> str:
    return service_body(
        receiver={
            "protocols": {
                "grpc": {"endpoint": "127.0.0.1:@GRPC_PORT@"},
                "http": {"endpoint": "127.0.0.1:@HTTP_PORT@", **(http or {})},
            },
            **receiver,
        },
        service={"admin": {"endpoint": "127.0.0.1:@ADMIN_PORT@", **(admin or {})}},
    )


def good_body(calls: int = 1) -> bytes:
    return make_request([make_span("chat gpt-4o", chat_attributes()) for _ in range(calls)]).SerializeToString()


def request_head(length: int | None = None, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {length}\r\n"
    return f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n{framing}\r\n".encode()


def is_closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the server closed the connection within `timeout` without answering anything."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def post_on(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, dict]:
    connection.request("POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"})
    response = connection.getresponse()
    response.read()
    return response.status, dict(response.headers)


def test_slow_senders_and_idle_connections_are_closed_and_counted(start_service):
    service = start_service(guarded_body(http=TIMEOUTS, admin=TIMEOUTS))
    head = request_head(len(good_body()))
    slow = [socket.create_connection(("127.0.0.1", service.http_port)) for _ in range(20)]
    silent = [socket.create_connection(("127.0.0.1", service.http_port)) for _ in range(5)]
    idle_admin = http.client.HTTPConnection("127.0.0.1", service.admin_port, timeout=5)
    idle_admin.request("GET", "/healthz")
    assert idle_admin.getresponse().read() == b"ok\n"

    # A byte every 0.3 s: each connection is alive and sending, just slower than the header deadline.
    still_open = set(slow)
    for index in range(12):
        for sock in list(still_open):
            try:
                sock.send(head[index : index + 1])
            except (BrokenPipeError, ConnectionResetError):
                still_open.discard(sock)
        time.sleep(0.3)
    assert all(is_closed_by_peer(sock, 1) for sock in slow + silent)
    assert service.value(CLOSED, server="otlp", reason="read_header_timeout") == 25
    assert service.value(CLOSED, server="admin", reason="idle_timeout") == 1
    assert service.value("agentopz_http_connections", server="otlp") == 0
    for sock in slow + silent:
        sock.close()

    # Everyone else is served; a keep-alive sender between batches is closed only after the idle timeout.
    sender = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5)
    assert post_on(sender, good_body())[0] == 200
    time.sleep(0.5)
    assert post_on(sender, good_body())[0] == 200
    assert sender.sock is not None and is_closed_by_peer(sender.sock, 2.5)
    assert service.value(CLOSED, server="otlp", reason="idle_timeout") == 1
    assert service.value("agentopz_llm_calls_total") == 2


def test_lying_content_length_and_endless_chunked_body_are_closed_by_the_body_timeout(start_service):
    service = start_service(guarded_body(http=TIMEOUTS))
    lying = socket.create_connection(("127.0.0.1", service.http_port))
    lying.sendall(request_head(1000) + good_body()[:10])  # promises 1,000 bytes, sends 10
    endless = socket.create_connection(("127.0.0.1", service.http_port))
    endless.sendall(request_head(chunked=True))
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 4:  # a small chunk every 0.2 s, never the last one
        try:
            endless.sendall(b"2\r\n\n\x00\r\n")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.2)
    assert closed or is_closed_by_peer(endless, 1)
    assert time.monotonic() - started < 1.5 + 1.5
    assert is_closed_by_peer(lying, 1)
    lying.close()
    endless.close()
    assert service.value(CLOSED, server="otlp", reason="read_body_timeout") == 2
    assert service.value("agentopz_receiver_spans_total") == 0
    assert "Traceback" not in service.log()
    with closing(http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5)) as sender:
        assert post_on(sender, good_body())[0] == 200


def test_chunked_body_over_the_limit_is_413_before_it_is_read_whole(start_service):
    limit = 1024 * 1024
    service = start_service(guarded_body(max_request_bytes=limit, max_inflight_bytes=64 * limit))
    sock = socket.create_connection(("127.0.0.1", service.http_port))
    sock.sendall(request_head(chunked=True))
    chunk = b"\x0a" * 16384
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    answer = b""
    while sent < 16 * limit:  # the body would never end: only the limit stops it
        readable, writable, _ = select.select([sock], [sock], [], 5)
        if readable:
            answer = sock.recv(65536)
            break
        if writable:
            sock.sendall(framed)
            sent += len(chunk)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert limit < sent < 16 * limit  # what is past the limit sits in socket buffers, never read
    assert service.value("agentopz_receiver_rejected_requests_total", transport="http", reason="too_large") == 1


def test_connection_cap_answers_503_with_retry_after_at_exactly_cap_plus_one(start_service):
    service = start_service(guarded_body(http={"max_connections": 5}, retry_after_seconds=3))
    open_connections = [http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5) for _ in range(5)]
    for connection in open_connections:
        assert post_on(connection, good_body())[0] == 200  # the fifth is exactly at the cap
    extra = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5)
    status, headers = post_on(extra, good_body())
    assert (status, headers["Retry-After"], headers["Connection"]) == (503, "3", "close")
    assert service.value(CLOSED, server="otlp", reason="connection_limit") == 1
    assert service.value("agentopz_llm_calls_total") == 5

    open_connections.pop().close()
    time.sleep(0.2)
    with closing(http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5)) as again:
        assert post_on(again, good_body())[0] == 200
    for connection in open_connections:
        connection.close()
    assert service.value("agentopz_llm_calls_total") == 6


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_bearer_scheme_is_case_insensitive_on_both_transports(start_service, scheme):
    service = start_service(guarded_body(auth={"token": OTLP_TOKEN}))
    with closing(http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=5)) as connection:
        headers = {"Content-Type": "application/x-protobuf", "Authorization": f"{scheme} {OTLP_TOKEN}"}
        connection.request("POST", "/v1/traces", good_body(), headers)
        assert connection.getresponse().status == 200
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        channel.unary_unary(EXPORT)(good_body(), timeout=5, metadata=(("authorization", f"{scheme} {OTLP_TOKEN}"),))
    assert service.value("agentopz_llm_calls_total") == 2


def test_inflight_bytes_are_shared_and_grpc_gets_unavailable_with_retry_info(start_service):
    limit = 1024 * 1024
    service = start_service(guarded_body(max_request_bytes=limit, max_inflight_bytes=limit, retry_after_seconds=4))
    # A slow HTTP upload holds 900 kB of the 1 MiB budget while it is being read.
    upload = socket.create_connection(("127.0.0.1", service.http_port))
    upload.sendall(request_head(limit) + b"\x0a" * 900_000)
    time.sleep(0.5)
    grpc_request = good_body(1000)
    assert 150_000 < len(grpc_request) < 900_000
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        export = channel.unary_unary(EXPORT)
        with pytest.raises(grpc.RpcError) as raised:
            export(grpc_request, timeout=5)
        error = raised.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        details = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
        retry = error_details_pb2.RetryInfo()
        assert details.code == code_pb2.UNAVAILABLE and details.details[0].Unpack(retry)
        assert retry.retry_delay.seconds == 4
        upload.close()  # the upload's bytes are released: the same request now fits
        time.sleep(0.3)
        export(grpc_request, timeout=5)
    assert service.value("agentopz_receiver_rejected_requests_total", transport="grpc", reason="busy") == 1
    assert service.value("agentopz_llm_calls_total") == 1000


def test_grpc_connection_cap_answers_unavailable_past_it(start_service):
    service = start_service(
        service_body(
            receiver={
                "protocols": {
                    "grpc": {"endpoint": "127.0.0.1:@GRPC_PORT@", "max_connections": 2},
                    "http": {"endpoint": "127.0.0.1:@HTTP_PORT@"},
                }
            }
        )
    )
    # A subchannel pool per channel: each channel is a connection of its own.
    channels = [
        grpc.insecure_channel(service.grpc_endpoint, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(3)
    ]
    codes = []
    for channel in channels:
        try:
            channel.unary_unary(EXPORT)(good_body(), timeout=5)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
    for channel in channels:
        channel.close()
    assert codes == [grpc.StatusCode.OK, grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE]
    assert service.value("agentopz_llm_calls_total") == 2


def slow_message(delay: float):
    """A request stream whose one message comes after `delay` seconds (a client sending slowly)."""
    time.sleep(delay)
    yield good_body()


def lingering_stream(delay: float):
    """A request stream that sends its message at once but ends only after `delay` seconds."""
    yield good_body()
    time.sleep(delay)


def test_grpc_message_that_arrives_too_slowly_gets_deadline_exceeded(start_service):
    service = start_service(
        guarded_body(protocols={"grpc": {"endpoint": "127.0.0.1:@GRPC_PORT@", "read_message_timeout_seconds": 1}})
    )
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            channel.stream_unary(EXPORT)(slow_message(4), timeout=10)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert raised.value.details() == "the request message did not arrive within 1 s"
        assert 0.9 < time.monotonic() - started < 3
        # A message in time whose stream is never ended is no complete call either.
        with pytest.raises(grpc.RpcError) as lingering:
            channel.stream_unary(EXPORT)(lingering_stream(4), timeout=10)
        assert lingering.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as two:
            channel.stream_unary(EXPORT)(iter([good_body(), good_body()]), timeout=10)
        assert (two.value.code(), two.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "a call carries exactly one request message",
        )
        # In time, the same stream is an ordinary export.
        channel.stream_unary(EXPORT)(slow_message(0.5), timeout=10)
    assert service.value("agentopz_receiver_rejected_requests_total", transport="grpc", reason="read_timeout") == 2
    assert service.value("agentopz_receiver_rejected_requests_total", transport="grpc", reason="decode") == 1
    assert service.value("agentopz_llm_calls_total") == 1


def test_grpc_calls_past_the_concurrency_cap_get_resource_exhausted_with_retry_info(start_service):
    grpc_protocol = {"endpoint": "127.0.0.1:@GRPC_PORT@", "max_concurrent_requests": 2}
    service = start_service(guarded_body(protocols={"grpc": grpc_protocol}, retry_after_seconds=3))
    with grpc.insecure_channel(service.grpc_endpoint) as channel:
        held = [channel.stream_unary(EXPORT).future(slow_message(2.5), timeout=10) for _ in range(2)]
        time.sleep(1)  # both calls have started and wait for their messages
        with pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(EXPORT)(good_body(), timeout=5)
        error = raised.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.details() == "more than 2 calls at once"
        details = status_pb2.Status.FromString(dict(error.trailing_metadata())["grpc-status-details-bin"])
        retry = error_details_pb2.RetryInfo()
        assert details.code == code_pb2.RESOURCE_EXHAUSTED and details.details[0].Unpack(retry)
        assert retry.retry_delay.seconds == 3
        for call in held:
            call.result(timeout=10)
        channel.unary_unary(EXPORT)(good_body(), timeout=5)  # the held calls are done: room again
    assert service.value("agentopz_receiver_rejected_requests_total", transport="grpc", reason="concurrency") == 1
    assert service.value("agentopz_llm_calls_total") == 3
