"""Several devices in one process (issue 18, item 1): `--devices`, placement by load, a persistent fault on one
device moving its sessions to the other with a `state` message, per-device /readyz and /metrics.  Two CPU pipelines
stand in for two GPUs."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from fake_engine import FakeEngine
from pydantic import ValidationError
from server_harness import FaultyPipe, RunningServer, noise_image, tiny_config

from sdxs.params import GenerationParams, GenerationRequest
from server.client import Client, encode_image
from server.config import parse_config
from server.devices import DevicePool, DeviceSlot, DeviceSpec, parse_devices
from server.metrics import Metrics
from server.protocol import OutputFrame
from server.worker import Job, Worker

pytestmark = pytest.mark.timeout(120)


# --- the option -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "labels"),
    [
        ("", ["cpu"]),
        ("cpu", ["cpu"]),
        ("cpu,cpu", ["cpu:0", "cpu:1"]),
        ("cpu:0, cpu:1", ["cpu:0", "cpu:1"]),
        ("cuda:0,cuda:1", ["cuda:0", "cuda:1"]),
        ("all", ["cuda:0", "cuda:1", "cuda:2"]),
    ],
)
def test_devices_option_names_one_slot_per_device(spec, labels):
    slots = parse_devices(spec, "cpu", cuda_count=lambda: 3)
    assert [slot.label for slot in slots] == labels
    assert all(slot.device == ("cpu" if label.startswith("cpu") else label) for slot, label in zip(slots, labels))
    assert parse_devices("all", "cpu", cuda_count=lambda: 0) == [DeviceSpec("cpu", "cpu")]


@pytest.mark.parametrize("spec", ["gpu0", "cuda:0,cuda:0", "cuda:x", "all,cpu", "cpu,,cpu"])
def test_a_bad_devices_option_is_refused_naming_it(spec):
    with pytest.raises(ValidationError, match="--devices"):
        parse_config(["--devices", spec], env={})


def test_devices_option_reads_its_environment_variable():
    assert parse_config([], env={"SDXS_DEVICES": "cpu,cpu", "SDXS_DEVICE_MAX_FAILURES": "5"}).devices == "cpu,cpu"
    assert parse_config(["--devices", "all"], env={"SDXS_DEVICES": "cpu"}).devices == "all"


# --- the pool, without threads ----------------------------------------------------------------------------------


class _Source:
    def __init__(self):
        self.last_served, self.results, self.moves, self.job = 0.0, [], [], None

    @property
    def pending(self):
        return self.job is not None

    def load(self):
        self.job = Job(GenerationRequest(GenerationParams(mode="text"), None), time.perf_counter(), self.results.append)

    def take_job(self):
        job, self.job = self.job, None
        return job

    def return_job(self, job):
        self.job = job

    def moved(self, device):
        self.moves.append(device)


def _pool(count: int) -> DevicePool:
    slots = []
    for i in range(count):
        slot = DeviceSlot(DeviceSpec(f"cpu:{i}", "cpu"))
        slot.engine = FakeEngine(key=lambda request: 0)
        slot.worker = Worker(slot.engine, Metrics(), max_batch=8, overlap=False)
        slots.append(slot)
    return DevicePool(slots, Metrics(), max_failures=2)


def _round(slot: DeviceSlot) -> None:
    for source in slot.sources:
        source.load()
    slot.worker._run_batch(slot.worker._stage(slot.worker._next_batch()))


def test_sessions_go_to_the_least_loaded_device_and_stay():
    pool = _pool(2)
    sources = [_Source() for _ in range(5)]
    for source in sources:
        pool.register(source)
    assert [pool.device_of(s) for s in sources] == ["cpu:0", "cpu:1", "cpu:0", "cpu:1", "cpu:0"]
    pool.unregister(sources[0])
    pool.unregister(sources[2])  # cpu:0 has 1 session, cpu:1 has 2
    late = _Source()
    pool.register(late)
    assert pool.device_of(late) == "cpu:0" and pool.device_of(sources[3]) == "cpu:1"
    assert pool.device_of(sources[0]) is None and sources[0] not in pool.slots[0].worker._sources


def test_a_device_that_keeps_failing_moves_its_sessions_and_the_last_one_stays():
    pool = _pool(2)
    sources = [_Source() for _ in range(4)]
    for source in sources:
        pool.register(source)
    good, bad = pool.slots
    bad.engine.broken = True
    _round(bad)  # one failed batch: answered with the error, still in rotation
    on_bad = [s for s in sources if pool.device_of(s) == "cpu:1"]
    assert all(s.results[-1].error is not None for s in on_bad) and bad.serving
    _round(good)
    _round(bad)  # the second in a row: out of rotation, its sessions move
    assert not bad.serving and "2 failed batches in a row" in bad.error
    assert all(pool.device_of(s) == "cpu:0" and s.moves == ["cpu:0"] for s in on_bad)
    assert len(good.sources) == 4 and not bad.sources and not bad.worker._sources
    _round(good)
    assert all(s.results[-1].error is None for s in sources)
    good.engine.broken = True
    for _ in range(3):
        _round(good)
    assert good.serving  # the last device in rotation is kept: nothing to move to
    entries = pool.as_list()
    assert [(e["device"], e["in_rotation"], e["sessions"]) for e in entries] == [
        ("cpu:0", True, 4),
        ("cpu:1", False, 0),
    ]


# --- two CPU "devices" through the real server ------------------------------------------------------------------


async def _stream(client: Client, images: list[bytes], until: float, log: list) -> None:
    """Keep one frame in flight until `until` (monotonic), and after a move until a frame came from the new device
    (on a slow machine the move may come late in the window); log (time, kind, detail) of every answer."""
    i = 0

    def going_on() -> bool:
        kinds = [kind for _, kind, _ in log if kind in ("state", "frame")]
        waiting = "state" in kinds and kinds[-1] == "state"
        return time.monotonic() < until or (waiting and time.monotonic() < until + 15)

    while going_on():
        frame_id = await client.send_frame(images[i % len(images)])
        i += 1
        while True:
            message = await client.recv(timeout=20)
            now = time.monotonic()
            if isinstance(message, OutputFrame):
                log.append((now, "frame", message.frame_id))
                break
            log.append((now, message["type"], message.get("device") or message.get("code")))
            if message["type"] == "error" and message.get("frame_id") == frame_id:
                break


def test_two_cpu_devices_share_sessions_and_survive_a_persistent_fault(tiny_model_dir):
    config = tiny_config(tiny_model_dir, devices="cpu:0,cpu:1", device_max_failures=2, torch_threads=1)
    server = RunningServer(config, wrap=FaultyPipe).start().wait_ready()
    images = [encode_image(noise_image(128, seed)) for seed in range(2)]
    try:
        ready = server.get("/readyz").json()
        assert [(d["device"], d["ready"], d["in_rotation"]) for d in ready["devices"]] == [
            ("cpu:0", True, True),
            ("cpu:1", True, True),
        ]

        async def go():
            clients = [await Client.open(server.url, {"params": {"mode": "image", "seed": 1}}) for _ in range(4)]
            ids = {c.welcome["session_id"]: i for i, c in enumerate(clients)}
            pool = server.state.pool
            placed = {ids[conn.session.id]: pool.device_of(conn.stream) for conn in server.state.connections}
            assert sorted(placed.values()) == ["cpu:0", "cpu:0", "cpu:1", "cpu:1"]
            logs = [[] for _ in clients]
            until = time.monotonic() + 3.0
            broke_at = time.monotonic() + 1.0

            async def fault():
                await asyncio.sleep(1.0)
                pool.slots[1].engine.broken = True

            streams = (_stream(c, images, until, log) for c, log in zip(clients, logs, strict=True))
            await asyncio.gather(fault(), *streams)
            for c in clients:
                await c.close()
            return placed, logs, broke_at

        placed, logs, broke_at = asyncio.run(go())
        for client, device in placed.items():
            log = logs[client]
            frames_after = [t for t, kind, _ in log if kind == "frame" and t > broke_at + 0.2]
            assert frames_after, f"a session on {device} got no frames after the fault"
            if device == "cpu:0":  # untouched: no error, no move
                assert [kind for _, kind, _ in log if kind != "frame"] == []
            else:  # a few failed frames, then one state message naming the other device, then frames again
                moves = [(t, detail) for t, kind, detail in log if kind == "state"]
                assert [detail for _, detail in moves] == ["cpu:0"]
                assert moves[0][0] - broke_at < 5.0
                errors = [detail for _, kind, detail in log if kind == "error"]
                # 0-3: its frames may or may not have been in the failed batches (another session's filled them)
                assert set(errors) <= {"inference_failed"} and len(errors) <= 3
                assert any(kind == "frame" and t > moves[0][0] for t, kind, _ in log)

        ready = server.get("/readyz")
        assert ready.status_code == 200
        devices = {d["device"]: d for d in ready.json()["devices"]}
        assert devices["cpu:1"]["in_rotation"] is False and "injected device fault" in devices["cpu:1"]["error"]
        assert devices["cpu:0"]["in_rotation"] is True
        assert server.state.engine is server.state.pool.slots[0].engine  # checks and control images: a working device
        metrics = server.get("/metrics").text
        assert 'sdxs_device_in_rotation{device="cpu:1"} 0.0' in metrics
        assert 'sdxs_device_in_rotation{device="cpu:0"} 1.0' in metrics
        failed = re.search(r'sdxs_device_batches_total\{device="cpu:1",result="failed"\} ([\d.]+)', metrics)
        assert failed and float(failed.group(1)) >= 2
        assert 'sdxs_device_frames_per_second{device="cpu:0"}' in metrics
    finally:
        server.stop()


def test_a_device_that_fails_to_load_is_reported_and_the_others_serve(tiny_model_dir, monkeypatch):
    from server import state as state_module

    real_load, calls = state_module.load_pipeline, []

    def load(config, status):
        calls.append(config.device)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: out of memory (injected)")
        return real_load(config, status)

    monkeypatch.setattr(state_module, "load_pipeline", load)
    server = RunningServer(tiny_config(tiny_model_dir, devices="cpu,cpu", torch_threads=1)).start().wait_ready()
    try:
        devices = server.get("/readyz").json()["devices"]
        assert [(d["device"], d["ready"], d["in_rotation"]) for d in devices] == [
            ("cpu:0", True, True),
            ("cpu:1", False, False),
        ]
        assert "out of memory (injected)" in devices[1]["error"]

        async def go():
            client = await Client.open(server.url, {"params": {"mode": "image"}})
            frame_id = await client.send_frame(encode_image(noise_image(128, 1)))
            await client.expect_output(frame_id)
            await client.close()

        asyncio.run(go())
        assert 'sdxs_device_in_rotation{device="cpu:1"} 0.0' in server.get("/metrics").text
    finally:
        server.stop()
