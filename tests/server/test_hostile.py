"""Hostile clients against a real uvicorn (issue 14, items 1, 3, 4, 5): wrongly typed and oversized fields, server
bugs anywhere in a session's life, floods from clients that do and do not read, abrupt disconnects. After each, every
slot is free again and the metrics read idle."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import (
    FaultyPipe,
    RunningServer,
    closed_because,
    flood_params,
    goodbye,
    noise_image,
    non_reading_client,
    tiny_config,
)

from server import connection as connection_module
from server import outbox as outbox_module
from server import serving as serving_module
from server import stream as stream_module
from server.client import Client, encode_image
from server.protocol import ImageFormat
from server.session import Session

pytestmark = pytest.mark.timeout(60)
HUGE = int("9" * 400)  # a 400-digit integer: valid JSON, no float can hold it


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """Two slots and a short queue, so that one leaked session is a visible outage."""
    config = tiny_config(tiny_model_dir, max_sessions=2, max_queue=4, max_violations=10)
    server = RunningServer(config, wrap=FaultyPipe).start().wait_ready()
    yield server
    server.stop()


def gauges(server: RunningServer) -> dict[str, float]:
    """Every gauge sample of /metrics, parsed, keyed like `sdxs_sessions{state="active"}`."""
    samples = {}
    for family in text_string_to_metric_families(server.get("/metrics").text):
        if family.type == "gauge":
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                samples[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return samples


async def idle(server: RunningServer, timeout: float = 5.0) -> None:
    """Wait until the server holds no session (then check it really holds none)."""
    state, deadline = server.state, time.monotonic() + timeout
    while (state.connections or state.admission.connected) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not state.connections and not state.admission.connected, "a session was never released"
    assert state.admission.active == [] and state.admission.queued == []


async def served_within(server: RunningServer, seconds: float) -> None:
    """A normal visitor gets a slot and an output frame within `seconds`."""
    start = time.monotonic()
    visitor = await Client.open(server.url)
    assert visitor.welcome["state"] == "active", "a visitor found every slot taken"
    await visitor.expect_output(await visitor.send_frame(encode_image(noise_image(128, 5))), timeout=seconds)
    assert time.monotonic() - start < seconds
    await visitor.close()


# --- item 1: every field type- and range-checked ------------------------------------------------------------------

AFTER_HELLO = [  # (message, code, field)
    ({"type": "ping", "t": HUGE}, "bad_message", "t"),
    ({"type": "ping", "t": "soon"}, "bad_message", "t"),
    ({"type": "ping", "t": True}, "bad_message", "t"),
    ({"type": "ping", "t": [1]}, "bad_message", "t"),
    ({"type": "ping", "t": 1e300}, "bad_message", "t"),
    ({"type": "params"}, "bad_message", "params"),
    ({"type": "params", "params": [1]}, "bad_message", "params"),
    ({"type": "params", "params": {"seed": True}}, "invalid_params", "seed"),
    ({"type": "params", "params": {"seed": HUGE}}, "invalid_params", "seed"),
    ({"type": "params", "params": {"seed": 1.5}}, "invalid_params", "seed"),
    ({"type": "params", "params": {"strength": "0.5"}}, "invalid_params", "strength"),
    ({"type": "params", "params": {"strength": False}}, "invalid_params", "strength"),
    ({"type": "params", "params": {"edge_low": 300}}, "invalid_params", "edge_low"),
    ({"type": "params", "params": {"prompt": 5}}, "invalid_params", "prompt"),
    ({"type": "params", "params": {"style": 5}}, "invalid_params", "style"),
    ({"type": "hello", "version": 1}, "bad_message", "type"),
    ({"type": 5}, "unknown_type", None),
    ({"type": ["ping"]}, "unknown_type", None),
]

HELLOS = [  # (hello, code, field, fatal)
    ({"version": True}, "unsupported_version", "version", True),
    ({"version": 1.0}, "unsupported_version", "version", True),
    ({"version": "1"}, "unsupported_version", "version", True),
    ({"version": HUGE}, "unsupported_version", "version", True),
    ({}, "unsupported_version", "version", True),
    ({"version": 1, "output_format": 5}, "bad_message", "output_format", False),
    ({"version": 1, "output_format": "gif"}, "bad_message", "output_format", False),
    ({"version": 1, "client": 5}, "bad_message", "client", False),
    ({"version": 1, "client": "x" * 65}, "bad_message", "client", False),
    ({"version": 1, "params": "seed=1"}, "bad_message", "params", False),
]


def test_wrongly_typed_fields_are_refused_never_echoed(server):
    async def go():
        client = await Client.open(server.url)
        seen = []
        for i, (msg, _, _) in enumerate(AFTER_HELLO):
            if i and i % 8 == 0:  # stay under max_violations
                await client.close()
                client = await Client.open(server.url)
            await client.send_json(msg)
            error = await client.expect("error")
            seen.append((msg, error["code"], error["field"], error["fatal"]))
        await client.send_json({"type": "ping", "t": 12.5})
        pong = await client.expect("pong")
        await client.close()
        return seen, pong, [m for m in client.messages if m["type"] == "pong"]

    seen, pong, pongs = run(go())
    assert [(code, field, fatal) for _, code, field, fatal in seen] == [(c, f, False) for _, c, f in AFTER_HELLO]
    assert pong["t"] == 12.5 and pongs == [pong]  # no bad ping was answered (echoed as null or true)


@pytest.mark.parametrize(("hello", "code", "field", "fatal"), HELLOS)
def test_a_bad_hello_is_refused_and_only_a_wrong_version_is_fatal(server, hello, code, field, fatal):
    async def go():
        client = await Client.open(server.url, hello=False)
        await client.send_json({"type": "hello", **hello})
        error = await client.expect("error")
        if fatal:
            return error, await goodbye(client)
        await client.send_json({"type": "hello", "version": 1})  # a corrected hello is still welcome
        welcome = await client.expect("welcome")
        await client.close()
        return error, welcome

    error, then = run(go())
    assert (error["code"], error["field"], error["fatal"]) == (code, field, fatal)
    if fatal:
        assert then == ({"type": "goodbye", "reason": "handshake", "close_code": 4002}, 4002)
    else:
        assert then["type"] == "welcome"


def test_invalid_hello_params_start_with_the_defaults(server):
    async def go():
        client = await Client.open(server.url, {"params": {"seed": True, "prompt": "kept?"}})
        await client.close()
        return client

    client = run(go())
    assert client.errors("invalid_params")[0]["field"] == "seed"
    assert client.welcome["params"]["seed"] == 0 and client.welcome["params"]["prompt"] != "kept?"


def test_bursts_of_huge_pings_leave_no_session_behind(server):
    """Ten clients each send 50 pings with a 400-digit `t`, right after the welcome and later: each is refused
    (bad_message), the repeat offenders are closed 1008, and a normal visitor is then served within 2 s."""

    async def abuser(delay: float) -> tuple[int | None, list[str]]:
        client = await Client.open(server.url, hello=False)
        await client.send_json({"type": "hello", "version": 1})
        if (await client.recv())["type"] != "welcome":  # 2 active + 4 queued: the others are told it is full
            return await client.closed(), [m.get("code") for m in client.errors()]
        await asyncio.sleep(delay)
        for _ in range(50):
            await client.ws.send(json.dumps({"type": "ping", "t": HUGE}))
        _, code = await goodbye(client)
        return code, [m.get("code") for m in client.errors()]

    async def go():
        results = await asyncio.gather(*(abuser(0.0 if i % 2 else 0.3) for i in range(10)), return_exceptions=True)
        await idle(server)
        await served_within(server, 2.0)
        return results

    for result in run(go()):
        assert not isinstance(result, BaseException), result
        code, errors = result
        if errors == ["server_full"]:
            assert code == 1013
        else:
            assert code == 1008 and set(errors) == {"bad_message", "policy_violation"}


# --- item 1: a server bug anywhere ends only its own session, with internal_error and 1011 ----------------------

FAULTS = {  # where the bug is: (object, attribute); each raises for the session whose prompt is "BUG"
    "handling a message": (connection_module.Connection, "_on_ping"),
    "the timers": (connection_module.Connection, "_tick"),
    "a loop callback (deliver)": (Session, "acknowledge"),
    "the worker thread (take_job)": (Session, "reusable"),
    "sending a frame": (connection_module.Connection, "_send_frame"),
    "activation from the queue": (connection_module.Connection, "_on_activated"),
}


def _session_fault(monkeypatch, owner, name):
    original = getattr(owner, name)

    def patched(self, *args, **kwargs):
        session = self if isinstance(self, Session) else self.session
        if session.params.prompt == "BUG":
            raise RuntimeError("injected server bug")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


@pytest.mark.parametrize("where", list(FAULTS))
def test_a_bug_anywhere_ends_only_that_session_with_internal_error(server, monkeypatch, where):
    _session_fault(monkeypatch, *FAULTS[where])

    async def victim() -> Client:
        if where == "activation from the queue":  # fill both slots, so the victim waits and is then promoted
            holders = [await Client.open(server.url) for _ in range(2)]
            client = await Client.open(server.url, {"params": {"prompt": "BUG"}})
            assert client.welcome["state"] == "queued"
            await holders[0].close()
            await asyncio.sleep(0.1)
            await holders[1].close()
            return client
        client = await Client.open(server.url, {"params": {"prompt": "BUG"}})
        if where == "handling a message":
            await client.send_json({"type": "ping"})
        elif where in ("the worker thread (take_job)", "a loop callback (deliver)", "sending a frame"):
            await client.send_frame(encode_image(noise_image(128, 9)))
        return client

    async def go():
        bystander = await Client.open(server.url)
        client = await victim()
        bye, code = await goodbye(client)
        out = await bystander.expect_output(await bystander.send_frame(encode_image(noise_image(128, 8))))
        await bystander.close()
        await idle(server)
        await served_within(server, 2.0)
        return client, bye, code, bystander, out

    client, bye, code, bystander, out = run(go())
    assert client.errors("internal_error")[0]["fatal"] is True
    assert (bye, code) == ({"type": "goodbye", "reason": "internal_error", "close_code": 1011}, 1011)
    assert bystander.errors() == [] and out.frame_id == 1


def test_a_failing_encoder_ends_the_session_with_internal_error(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected encoder bug")

    monkeypatch.setattr(stream_module.codec, "encode", broken)

    async def go():
        client = await Client.open(server.url)
        await client.send_frame(encode_image(noise_image(128, 10)))
        bye = await goodbye(client)
        monkeypatch.undo()
        await idle(server)
        await served_within(server, 2.0)
        return bye

    assert run(go()) == ({"type": "goodbye", "reason": "internal_error", "close_code": 1011}, 1011)


# --- item 3: slow consumers are judged by what they leave unread ------------------------------------------------

def test_a_prompt_reader_may_flood_pings_and_params(server):
    async def go():
        client = await Client.open(server.url)
        pongs, params_ok, done = 0, 0, asyncio.Event()

        async def read():
            nonlocal pongs, params_ok
            while pongs < 2500 or params_ok < 300:
                msg = await client.recv(timeout=20)
                if isinstance(msg, dict):
                    assert msg["type"] != "goodbye", msg
                    pongs += msg["type"] == "pong"
                    params_ok += msg["type"] == "params_ok"
            done.set()

        reader = asyncio.create_task(read())
        for i in range(2000):  # 2000 pings 0.5 ms apart
            await client.send_json({"type": "ping", "t": i})
            await asyncio.sleep(0.0005)
        for i in range(500):  # then 500 in one burst
            await client.send_json({"type": "ping", "t": i})
        for i in range(300):  # a slider dragged fast
            await client.send_json({"type": "params", "params": {"strength": 0.1 + (i % 80) / 100}})
        await asyncio.wait_for(reader, 30)
        await client.send_json({"type": "bye"})
        return client, await goodbye(client)

    client, (bye, code) = run(go())
    assert bye["reason"] == "client" and code == 1000
    assert client.errors() == []


SLOW = {"type": "goodbye", "reason": "slow_consumer", "close_code": 1008}


FLOOD = 6000  # about 7 MB of answers: loopback sockets buffer up to about 4 MB before a server's write blocks


def test_a_flooder_that_does_not_read_is_closed_and_never_buffered_unboundedly(server, monkeypatch):
    monkeypatch.setattr(outbox_module, "STALL_S", 60.0)  # only the memory bound acts here
    monkeypatch.setattr(outbox_module, "MAX_BACKLOG_BYTES", 256 * 1024)
    peak = []

    def sample():
        peak.append(max((c.outbox.backlog_bytes for c in server.state.connections.copy()), default=0))

    async def go():
        client = await non_reading_client(server.url)
        await flood_params(client, FLOOD, sample)  # about 7 MB of answers it does not read ...
        for _ in range(60):  # ... while the server works through what it sent
            sample()
            await asyncio.sleep(0.05)
        result = await goodbye(client)
        await idle(server)
        return result

    assert run(go()) == (SLOW, 1008)
    assert max(peak) <= 256 * 1024 + 2000, "the server buffered without bound"


def test_a_client_that_stops_reading_gets_goodbye_slow_consumer(server, monkeypatch, caplog):
    """It fills the pipe, then reads nothing: once a send has waited STALL_S the session is over, and the client
    finds the goodbye before the close when it reads again."""
    monkeypatch.setattr(outbox_module, "STALL_S", 1.0)
    monkeypatch.setattr(outbox_module, "MAX_BACKLOG_BYTES", 1 << 30)  # only the stall acts here

    async def go():
        client = await non_reading_client(server.url)
        await flood_params(client, FLOOD)
        await asyncio.sleep(2.5)
        result = await goodbye(client)
        await idle(server)
        return client, result

    with caplog.at_level(logging.INFO, logger="sdxs"):
        client, result = run(go())
    assert result == (SLOW, 1008)
    assert closed_because(caplog, [client]) == ["goodbye slow_consumer, close 1008"]  # the log says why (issue 25)


def test_a_client_that_never_reads_again_is_dropped_and_its_socket_freed(server, monkeypatch, caplog):
    """Its session ends after SEND_TIMEOUT_S without a goodbye it could read; then the socket, which asyncio would
    keep trying to flush forever, is aborted REAP_AFTER_S later (both shortened here)."""
    monkeypatch.setattr(connection_module, "SEND_TIMEOUT_S", 1.0)
    monkeypatch.setattr(serving_module, "REAP_AFTER_S", 1.0)
    sockets = server.server.server_state.connections

    async def go():
        before = len(sockets)
        client = await non_reading_client(server.url)
        await flood_params(client, FLOOD)
        await idle(server, timeout=10)  # the session ended ...
        deadline = time.monotonic() + 10
        while len(sockets) > before and time.monotonic() < deadline:  # ... and then its socket went
            await asyncio.sleep(0.1)
        return client, len(sockets) - before

    with caplog.at_level(logging.INFO, logger="sdxs"):
        client, left = run(go())
    assert left == 0
    # the log says why (issue 25): the flood may first have been judged a slow consumer (over 1 MiB waiting)
    assert closed_because(caplog, [client]) in (["the client read nothing for 1 s (dropped without a goodbye)"],
                                                ["goodbye slow_consumer, close 1008"])


# --- item 4: metrics stay true ---------------------------------------------------------------------------------

def test_gauges_return_to_idle_after_abrupt_disconnects(server):
    async def busy(prompt: str) -> Client:
        client = await Client.open(server.url, {"params": {"prompt": prompt}})
        for i in range(3):
            await client.send_frame(encode_image(noise_image(128, 60 + i)))
        return client

    async def go():
        clients = [await busy("SLOW"), await busy("a house")]  # both slots; one mid-inference (0.6 s)
        clients += [await busy("queued") for _ in range(3)]  # queued (their frames earn not_active)
        clients += [await Client.open(server.url, hello=False) for _ in range(3)]  # still in the handshake
        await asyncio.sleep(0.3)
        during = gauges(server)
        for client in clients:
            client.ws.transport.abort()  # no close handshake, frames pending and in inference
        await idle(server)
        await asyncio.sleep(0.8)  # the abandoned inference finishes
        return during, gauges(server)

    during, after = run(go())
    assert during['sdxs_sessions{state="active"}'] == 2 and during['sdxs_sessions{state="queued"}'] == 3
    assert after['sdxs_sessions{state="active"}'] == 0 and after['sdxs_sessions{state="queued"}'] == 0
    assert after["sdxs_pending_frames"] == 0


# --- item 5: bounded echoes, quiet logs --------------------------------------------------------------------------

def test_error_messages_quote_only_a_short_prefix_of_client_input(server):
    big = "k" * 200_000
    texts = [
        json.dumps({"type": "params", "params": {big: 1}}),
        json.dumps({"type": big}),
        json.dumps({"type": "ping", "t": big}),
        json.dumps({"type": "params", "params": {"style": big}}),
        json.dumps({"type": "params", "params": {"prompt": big}}),
        "{" + big,
    ]

    async def go():
        sizes = []
        for text in texts:
            client = await Client.open(server.url)
            await client.ws.send(text)
            await client.expect("error")
            sizes.append(len(json.dumps(client.errors()[-1])))
            await client.close()
        client = await Client.open(server.url, hello=False)
        await client.send_json({"type": "hello", "version": big})
        await client.expect("error")
        sizes.append(len(json.dumps(client.errors()[-1])))
        return sizes

    sizes = run(go())
    assert max(sizes) < 600, sizes


def test_client_disconnects_are_info_not_errors(server, caplog):
    payload = encode_image(noise_image(128, 70))

    async def go():
        clients = []
        for i in range(16):  # leave while answers are on their way, at different points
            client = await Client.open(server.url, {"output_format": "png", "params": {"seed": i}})
            clients.append(client)
            for j in range(40):
                await client.send_json({"type": "ping", "t": j})
            await client.send_frame(payload)
            await asyncio.sleep(0.003 * (i % 8))
            (client.ws.transport.abort if i % 2 else client.ws.transport.close)()
        blocked = await non_reading_client(server.url)  # leaves while the server waits to write to it
        await flood_params(blocked, FLOOD)
        await asyncio.sleep(0.5)
        blocked.ws.transport.abort()
        client = await Client.open(server.url)
        await client.close()
        await idle(server)
        return [*clients, blocked, client]

    with caplog.at_level(logging.INFO, logger="sdxs"):
        clients = run(go())
    ours = [r for r in caplog.records if r.name.startswith("sdxs")]
    assert [r.getMessage() for r in ours if r.levelno >= logging.WARNING or r.exc_info] == []
    assert any("disconnected" in r.getMessage() for r in ours)
    why = closed_because(caplog, clients)  # each session's last line says how it ended (issue 25); the flooder that
    assert len(why) == 18 and [  # left mid-write may first have been judged a slow consumer (over 1 MiB waiting)
        w for w in why if not w.startswith("the client disconnected") and w != "goodbye slow_consumer, close 1008"
    ] == [], why


def test_frame_ids_and_timestamps_of_any_value_are_handled(server):
    async def go():
        client = await Client.open(server.url, {"params": {"mode": "text"}})
        outs = []
        for frame_id in (0, 2**32 - 1):
            await client.send_frame(b"", ImageFormat.NONE, frame_id=frame_id)
            outs.append((await client.expect_output(frame_id)).frame_id)
        await client.send_frame(b"", ImageFormat.NONE, frame_id=5)  # not greater than the last: refused
        error = await client.expect("error")
        await client.close()
        return outs, error

    outs, error = run(go())
    assert outs == [0, 2**32 - 1] and error["code"] == "bad_frame_id"
