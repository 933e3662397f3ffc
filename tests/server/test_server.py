"""The server through a real uvicorn on loopback and real WebSocket clients, with the tiny random-weight model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import zlib

import numpy as np
import pytest
from server_harness import RunningServer, closed_because, noise_image, reference, tiny_config
from websockets.exceptions import ConnectionClosed

from sdxs import GenerationRequest
from sdxs.params import GenerationParams
from server.client import Client, decode_image, encode_image
from server.protocol import ImageFormat, OutputFlag

pytestmark = pytest.mark.timeout(120)


def run(coro):
    return asyncio.run(coro)


# --- loading, health, metrics -------------------------------------------------------------------------------------

def test_while_loading_health_answers_and_readiness_does_not(main_server):
    early = main_server.early
    assert early["healthz"].status_code == 200
    assert early["readyz"].status_code == 503
    assert early["readyz"].json()["stage"] in ("starting", "loading", "warming_up")
    messages, code = early["ws"]
    assert messages[0]["code"] == "model_loading" and messages[0]["fatal"] is True
    assert code == 1013
    assert main_server.get("/readyz").status_code == 200


def test_config_json_labels_random_model_and_page_is_served(main_server):
    config = main_server.get("/config.json").json()
    assert config["model"]["is_random"] is True
    assert config["model"]["size"] == 128
    assert config["protocol_version"] == 1 and config["ws_path"] == "ws"
    assert "strength" in config["schema"]["properties"]
    page = main_server.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_load_failure_names_local_dir_and_tiny(tmp_path):
    server = RunningServer(tiny_config(tmp_path / "no-such-model")).start()
    try:
        assert not server.state.wait_ready(30)
        ready = server.get("/readyz")
        assert ready.status_code == 503
        error = ready.json()["error"]
        assert "--model DIR" in error and "--model tiny" in error
        assert server.get("/healthz").status_code == 200
    finally:
        server.stop()


# --- the round trip ---------------------------------------------------------------------------------------------

def test_round_trip_equals_pipeline_output(main_server):
    image = noise_image(128, 0)
    params = {"prompt": "a red house", "seed": 7, "strength": 0.6, "mode": "image"}

    async def go():
        client = await Client.open(main_server.url, {"params": params, "output_format": "png"})
        assert client.welcome["state"] == "active"
        assert client.welcome["params"]["prompt"] == "a red house"
        frame_id = await client.send_frame(encode_image(image))
        out = await client.expect_output(frame_id)
        await client.close()
        return out

    out = run(go())
    assert out.frame_id == 1 and out.fmt is ImageFormat.PNG and out.batch_size == 1
    assert out.timings.inference_ms > 0 and out.timings.server_ms >= out.timings.inference_ms
    expected = reference(main_server, [GenerationRequest(GenerationParams(**params), image)])[0]
    # the worker thread runs with the server's torch thread count (one per core but one), this thread with torch's
    # default: float sums in another order can flip a rare pixel by one level, nothing more
    diff = np.abs(decode_image(out.payload).astype(int) - expected)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_jpeg_round_trip_matches_up_to_codec(main_server):
    image = noise_image(128, 1)

    async def go():
        client = await Client.open(main_server.url, {"params": {"seed": 3}})
        frame_id = await client.send_frame(encode_image(image))
        out = await client.expect_output(frame_id)
        await client.close()
        return out

    out = run(go())
    assert out.fmt is ImageFormat.JPEG
    expected = reference(main_server, [GenerationRequest(GenerationParams(seed=3), image)])[0]
    assert np.abs(decode_image(out.payload).astype(int) - expected).mean() < 6


def test_unchanged_input_is_answered_without_inference(main_server):
    payload = encode_image(noise_image(128, 2))

    async def go():
        client = await Client.open(main_server.url, {"output_format": "png"})
        first = await client.expect_output(await client.send_frame(payload))
        second = await client.expect_output(await client.send_frame(payload))
        await client.send_json({"type": "params", "params": {"seed": 11}})
        await client.expect("params_ok")
        third = await client.expect_output(await client.send_frame(payload))
        await client.close()
        return first, second, third

    first, second, third = run(go())
    assert not first.flags & OutputFlag.REUSED
    assert second.flags & OutputFlag.REUSED and second.timings.inference_ms == 0 and second.payload == first.payload
    assert not third.flags & OutputFlag.REUSED and third.payload != first.payload


def test_text_mode_frames_need_no_image(main_server):
    async def go():
        client = await Client.open(main_server.url, {"params": {"mode": "text"}})
        out = await client.expect_output(await client.send_frame(b"", ImageFormat.NONE))
        await client.send_json({"type": "params", "params": {"mode": "image"}})
        await client.expect("params_ok")
        await client.send_frame(b"", ImageFormat.NONE)
        error = await client.expect("error")
        await client.close()
        return out, error

    out, error = run(go())
    assert decode_image(out.payload).shape == (128, 128, 3)
    assert error["code"] == "image_required"


def test_submit_one_for_gradio_uses_the_same_worker(main_server):
    image = noise_image(128, 4)
    params = GenerationParams(seed=5)
    out = run(main_server.state.pool.submit_one(params, image))
    expected = reference(main_server, [GenerationRequest(params, image)])[0]
    np.testing.assert_array_equal(out, expected)


# --- flow control and batching ----------------------------------------------------------------------------------

def test_ten_quick_frames_process_the_newest_not_ten(main_server):
    payloads = [encode_image(noise_image(128, 100 + i)) for i in range(10)]

    async def go():
        client = await Client.open(main_server.url)
        for payload in payloads:
            await client.send_frame(payload)
        last = await client.expect_output(10)
        await client.send_json({"type": "ping", "t": 1})
        await client.expect("pong")  # the session survived the warnings
        await client.close()
        return client, last

    client, last = run(go())
    assert last.frame_id == 10
    assert len(client.outputs) < 10
    assert client.errors("flow_control")  # it sent more than max_in_flight: warned, not closed
    assert [m["frame_id"] for m in client.errors("flow_control")] == [None] * len(client.errors("flow_control"))


def test_four_sessions_share_batches(main_server):
    async def session(seed: int) -> list:
        client = await Client.open(main_server.url)
        rng = np.random.default_rng(seed)
        in_flight = []
        for _ in range(8):
            in_flight.append(await client.send_frame(encode_image(rng.integers(0, 256, (128, 128, 3), np.uint8))))
            if len(in_flight) >= 2:
                await client.expect_output(in_flight.pop(0))
        await client.expect_output(in_flight[-1])
        await client.close()
        return client.outputs

    async def go():
        return await asyncio.gather(*(session(s) for s in range(4)))

    outputs = [o for session_outputs in run(go()) for o in session_outputs]
    assert max(o.batch_size for o in outputs) > 1
    assert "sdxs_batch_size_bucket" in main_server.get("/metrics").text


def test_injected_inference_error_reaches_only_its_batch(main_server):
    async def failing():
        # sketch mode never shares a batch (batch_key) with the image-mode session below
        client = await Client.open(main_server.url, {"params": {"prompt": "FAIL", "mode": "sketch"}})
        for _ in range(3):
            frame_id = await client.send_frame(encode_image(noise_image(128, 9)))
            error = await client.expect("error")
            assert error["code"] == "inference_failed" and error["frame_id"] == frame_id
        await client.send_json({"type": "params", "params": {"prompt": "a boat"}})
        await client.expect("params_ok")
        out = await client.expect_output(await client.send_frame(encode_image(noise_image(128, 9))))
        await client.close()
        return out

    async def healthy():
        client = await Client.open(main_server.url)
        for i in range(4):
            await client.expect_output(await client.send_frame(encode_image(noise_image(128, 50 + i))))
        await client.close()
        return client

    async def go():
        return await asyncio.gather(failing(), healthy())

    recovered, bystander = run(go())
    assert recovered.batch_size >= 1  # the worker went on after the failures
    assert bystander.errors() == [] and len(bystander.outputs) == 4


def test_disconnect_mid_inference_costs_nothing(main_server):
    state = main_server.state

    async def go():
        leaver = await Client.open(main_server.url, {"params": {"prompt": "SLOW"}})
        await leaver.send_frame(encode_image(noise_image(128, 20)))
        await asyncio.sleep(0.2)  # inference (0.6 s) is running now
        leaver.ws.transport.abort()  # no close handshake
        other = await Client.open(main_server.url)
        out = await other.expect_output(await other.send_frame(encode_image(noise_image(128, 21))))
        await other.close()
        for _ in range(100):  # both sessions are cleaned up soon after
            if not state.connections:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.8)  # and the abandoned inference (0.6 s) has finished
        return out

    out = run(go())
    assert out.frame_id == 1
    assert state.connections == set() and state.admission.active == []
    assert 'sdxs_sessions{state="active"} 0.0' in main_server.get("/metrics").text


# --- bad input ----------------------------------------------------------------------------------------------------

def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but carries almost no data (a decompression-bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD_FRAMES = {
    "bad_image": [b"this is not an image at all", encode_image(noise_image(128, 30))[:300],
                  encode_image(noise_image(64, 31), "jpeg")],  # declared PNG, actually JPEG
    "image_too_small": [encode_image(np.zeros((1, 1, 3), np.uint8))],
    "image_too_large": [_png_header_only(20000, 20000), _png_header_only(5000, 16)],
}

BAD_TEXT = [
    ("not json {", "bad_json", None),
    ("[1, 2]", "bad_json", None),
    ('{"type": "dance"}', "unknown_type", None),
    ('{"no_type": 1}', "unknown_type", None),
    ('{"type": "params", "params": {"strength": 7}}', "invalid_params", "strength"),
    ('{"type": "params", "params": {"strength": "strong"}}', "invalid_params", "strength"),
    ('{"type": "params", "params": {"strength": NaN}}', "invalid_params", "strength"),
    ('{"type": "params", "params": {"seed": Infinity}}', "invalid_params", "seed"),
    ('{"type": "params", "params": {"colour": "red"}}', "invalid_params", "colour"),
    ('{"type": "params", "params": {"mode": "video"}}', "invalid_params", "mode"),
    ('{"type": "params", "params": "strength=1"}', "bad_message", "params"),
    ('{"type": "params", "params": {"prompt": "' + "x" * 100_000 + '"}}', "invalid_params", "prompt"),
]


def test_bad_input_gets_coded_errors_and_others_see_nothing(main_server):
    async def go():
        bystander = await Client.open(main_server.url)
        await bystander.expect_output(await bystander.send_frame(encode_image(noise_image(128, 40))))
        seen = []
        for code, payloads in BAD_FRAMES.items():
            client = await Client.open(main_server.url)
            for payload in payloads:
                await client.send_frame(payload)
                error = await client.expect("error")
                seen.append((code, error["code"], error["frame_id"] is not None))
            await client.close()
        client = await Client.open(main_server.url)
        for text, code, field in BAD_TEXT:
            await client.ws.send(text)
            error = await client.expect("error")
            seen.append((code, error["code"], error["field"] == field))
        await client.ws.send(b"XX" + b"\x00" * 20)  # binary message with a bad magic
        seen.append(("bad_frame_header", (await client.expect("error"))["code"], True))
        await client.send_frame(b"x" * (300 * 1024))  # over max_message_bytes (256 KiB)
        seen.append(("message_too_big", (await client.expect("error"))["code"], True))
        await client.send_json({"type": "ping"})
        await client.expect("pong")  # still served
        await client.close()
        early = await Client.open(main_server.url, hello=False)
        await early.send_frame(encode_image(noise_image(128, 41)))
        seen.append(("not_ready", (await early.expect("error"))["code"], True))
        await early.close()
        out = await bystander.expect_output(await bystander.send_frame(encode_image(noise_image(128, 42))))
        await bystander.close()
        return seen, bystander, out

    seen, bystander, out = run(go())
    for expected, got, detail_ok in seen:
        assert (expected, detail_ok) == (got, True)
    assert bystander.errors() == [] and out.frame_id == 2


def test_repeated_abuse_closes_with_policy_violation(main_server, caplog):
    async def go():
        client = await Client.open(main_server.url)
        for _ in range(12):
            await client.ws.send("{broken")
        code = await client.closed()
        while main_server.state.connections:  # the session's last log line follows the close
            await asyncio.sleep(0.02)
        return client, code

    with caplog.at_level(logging.INFO, logger="sdxs"):
        client, code = run(go())
    assert code == 1008
    assert client.messages[-1] == {"type": "goodbye", "reason": "policy_violation", "close_code": 1008}
    assert client.errors("policy_violation")[0]["fatal"] is True
    assert closed_because(caplog, [client]) == ["goodbye policy_violation, close 1008"]  # the log says why (issue 25)


def test_frame_flood_closes_with_policy_violation(main_server):
    payload = encode_image(noise_image(128, 60))

    async def go():
        client = await Client.open(main_server.url)
        for _ in range(40):
            await client.send_frame(payload)
        return client, await client.closed()

    client, code = run(go())
    assert code == 1008 and client.errors("flow_control")


def test_unsupported_version_is_refused(main_server):
    async def go():
        client = await Client.open(main_server.url, hello=False)
        await client.send_json({"type": "hello", "version": 99})
        return client, await client.closed()

    client, code = run(go())
    assert code == 4002 and client.errors("unsupported_version")


# --- admission and timers -----------------------------------------------------------------------------------------

def test_queueing_server_full_and_per_client_cap(tiny_model_dir):
    config = tiny_config(tiny_model_dir, max_sessions=1, max_queue=1, max_sessions_per_client=3)
    server = RunningServer(config).start().wait_ready()

    async def go():
        first = await Client.open(server.url)
        second = await Client.open(server.url)
        assert (first.welcome["state"], second.welcome["state"]) == ("active", "queued")
        assert (await second.expect("queue"))["position"] == 1
        await second.send_frame(encode_image(noise_image(128, 70)))
        assert (await second.expect("error"))["code"] == "not_active"
        third = await Client.open(server.url, hello=False)
        await third.send_json({"type": "hello", "version": 1})
        assert (await third.expect("error"))["code"] == "server_full"
        assert await third.closed() == 1013
        waiting = await Client.open(server.url, hello=False)  # 3 sockets from this address now
        fourth = await Client.open(server.url, hello=False)
        assert (await fourth.expect("error"))["code"] == "too_many_sessions"
        assert await fourth.closed() == 1013
        await first.send_json({"type": "bye"})
        assert (await first.expect("goodbye"))["reason"] == "client"
        assert await first.closed() == 1000
        assert (await second.expect("state"))["state"] == "active"  # a promoted session gets a state message ...
        assert not [m for m in first.messages if m["type"] == "state"]  # ... one active from its welcome does not
        out = await second.expect_output(await second.send_frame(encode_image(noise_image(128, 71))))
        await second.close()
        await waiting.close()
        return out

    try:
        assert run(go()).frame_id == 2
    finally:
        server.stop()


def test_time_limit_idle_timeout_and_handshake_timeout(tiny_model_dir, caplog):
    config = tiny_config(tiny_model_dir, session_time_limit_s=3.0, idle_timeout_s=1.5, handshake_timeout_s=1.0,
                         time_left_every_s=0.5)
    server = RunningServer(config).start().wait_ready()

    async def busy():
        client = await Client.open(server.url)
        while not client.messages or client.messages[-1]["type"] != "goodbye":  # active (pings) until the limit
            try:
                await client.send_json({"type": "ping"})
            except ConnectionClosed:  # the goodbye and the close can land between two reads: both are still queued
                break
            with contextlib.suppress(TimeoutError):
                while True:
                    if (await client.recv(timeout=0.3))["type"] == "goodbye":
                        break
        return client, await client.closed()

    async def idle():
        client = await Client.open(server.url)
        return client, await client.closed()

    async def silent():
        client = await Client.open(server.url, hello=False)
        return client, await client.closed()

    async def go():
        return await asyncio.gather(busy(), idle(), silent())

    try:
        with caplog.at_level(logging.INFO, logger="sdxs"):
            (busy_client, busy_code), (idle_client, idle_code), (silent_client, silent_code) = run(go())
    finally:
        server.stop()
    assert closed_because(caplog, [busy_client]) == ["goodbye time_limit, close 4000"]  # the log says why (issue 25)
    assert closed_because(caplog, [idle_client]) == ["goodbye idle_timeout, close 4001"]
    assert "goodbye handshake, close 4002" in closed_because(caplog)  # no hello: no session id to pick it by
    assert busy_code == 4000 and busy_client.messages[-1]["reason"] == "time_limit"
    assert len([m for m in busy_client.messages if m["type"] == "time_left"]) >= 3
    assert idle_code == 4001 and idle_client.messages[-1]["reason"] == "idle_timeout"
    assert silent_code == 4002 and silent_client.errors("handshake_timeout")


def test_control_image_on_request(main_server):
    image = noise_image(128, 80)

    async def go():
        client = await Client.open(main_server.url, {"params": {"mode": "edges"}, "output_format": "png"})
        assert "control" in client.welcome["features"]
        await client.expect_output(await client.send_frame(encode_image(image)))
        await client.send_json({"type": "control"})
        control = await client.expect_output()
        await client.send_json({"type": "params", "params": {"mode": "image"}})
        await client.expect("params_ok")
        await client.send_json({"type": "control"})
        error = await client.expect("error")
        await client.close()
        return control, error

    control, error = run(go())
    assert control.flags & OutputFlag.CONTROL and control.frame_id == 1
    request = GenerationRequest(GenerationParams(mode="edges"), image)
    expected = np.asarray(main_server.state.engine.control_image(request).convert("RGB"))
    np.testing.assert_array_equal(decode_image(control.payload), expected)
    assert error["code"] == "no_control" and error["fatal"] is False


def test_message_far_over_the_limit_is_cut_by_the_transport(main_server):
    async def go():
        client = await Client.open(main_server.url)
        await client.ws.send(b"SX" + bytes(5 * 256 * 1024))  # over 4x max_message_bytes
        return await client.closed()

    assert run(go()) == 1009
