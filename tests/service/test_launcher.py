"""The launcher the tests start their servers with (tests/support/processes.py): ready, exited, not ready
in time, and a port taken between picking it and binding it."""

from __future__ import annotations

import socket
import sys
import urllib.request

import pytest
from support.otlp_sinks import GrpcSink, HttpSink
from support.probe_stand_in import running_stand_in
from support.processes import Command, StartError, http_ok, launch, listening


def http_server(port: int) -> list[str]:
    return [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]


def test_a_server_is_returned_once_ready_on_the_ports_picked_for_it_and_stops(tmp_path):
    def command(ports: tuple[int, ...]) -> Command:
        return Command(http_server(ports[0]), http_ok(f"http://127.0.0.1:{ports[0]}/"), cwd=tmp_path)

    launched = launch("http.server", command, tmp_path / "server.log", ports=1)
    [port] = launched.ports
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        assert response.status == 200
    assert launched.stop() == -15  # SIGTERM
    assert listening(port)() is False


def test_a_process_that_exits_before_it_is_ready_is_an_error_with_its_output(tmp_path):
    script = "import sys; print('bad config: no such key'); sys.exit(3)"
    with pytest.raises(StartError) as error:
        launch("checker", lambda ports: Command([sys.executable, "-c", script], lambda: False), tmp_path / "c.log")
    assert str(error.value) == "checker exited with 3 before it was ready; its output:\nbad config: no such key\n"


def test_a_process_not_ready_in_time_is_stopped_and_reported_with_its_output(tmp_path):
    script = "import time; print('waiting for nothing', flush=True); time.sleep(60)"
    started = []

    def command(ports: tuple[int, ...]) -> Command:
        started.append(ports)
        return Command([sys.executable, "-c", script], lambda: False)

    with pytest.raises(StartError) as error:
        launch("sleeper", command, tmp_path / "s.log", ports=1, timeout=1.5)
    assert str(error.value) == "sleeper not ready within 1.5 s; its output:\nwaiting for nothing\n"
    assert len(started) == 1  # not ready is not retried, whatever the ports


def test_a_port_taken_before_the_process_binds_it_is_retried_on_new_ports(tmp_path):
    with socket.socket() as taken:
        # Another process holds the port by the time the first attempt binds it (it never answers HTTP).
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        tried = []

        def command(ports: tuple[int, ...]) -> Command:
            port = taken_port if not tried else ports[0]
            tried.append(port)
            return Command(http_server(port), http_ok(f"http://127.0.0.1:{port}/"), cwd=tmp_path)

        with launch("http.server", command, tmp_path / "server.log", ports=1) as launched:
            assert len(tried) == 2
            assert tried[0] == taken_port
            assert launched.ports == (tried[1],)
            assert tried[1] != taken_port
            assert launched.process.poll() is None


def test_a_taken_port_on_the_last_attempt_is_an_error_naming_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(StartError) as error:
            launch("http.server", lambda ports: Command(http_server(port), http_ok(url)), tmp_path / "h.log", ports=1)
    message = str(error.value)
    assert message.startswith("http.server exited with 1 before it was ready; its output:\n")
    assert "Address already in use" in message


@pytest.mark.parametrize("sink_class", [GrpcSink, HttpSink])
def test_sinks_and_stand_ins_bind_port_zero_and_report_the_port_they_got(sink_class):
    with sink_class() as sink:
        assert sink.port > 0
        assert listening(sink.port)()
    with running_stand_in() as agent:
        assert agent.port > 0
        assert agent.url == f"http://127.0.0.1:{agent.port}/chat"
        assert listening(agent.port)()
