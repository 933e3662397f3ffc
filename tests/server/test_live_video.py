"""Live video through the server (issue 23, docs/protocol.md section 5a): the skip filter, its flag and its count, the
order of answers while a skipped frame waits for its picture, SETTLING until a session's history has settled, REUSED
only after it, sessions' histories their own and freed when they end."""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest
from server_harness import reference

from sdxs import GenerationRequest
from sdxs.params import GenerationParams
from sdxs.temporal import TemporalState
from server.client import Client, decode_image, encode_image
from server.protocol import ImageFormat, OutputFlag

pytestmark = pytest.mark.timeout(60)
SKIP = {"mode": "image", "skip_threshold": 3.0, "skip_max": 3}


def scene(seed: int = 0, shift: int = 0, side: int = 256) -> np.ndarray:
    """A smooth scene (a gradient and two discs) with camera-like noise (sigma 3), moved `shift` pixels right."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    x = x - shift
    base = np.stack([x, y, 255 - x], -1) * 0.8
    base[(x - 90) ** 2 + (y - 100) ** 2 < 40**2] = (230, 200, 40)
    base[(x - 170) ** 2 + (y - 160) ** 2 < 30**2] = (30, 60, 200)
    noise = np.random.default_rng(seed).normal(0, 3, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


async def one_by_one(client: Client, images: list[np.ndarray | None], params: dict | None = None,
                     fmt: str = "jpeg") -> list:
    """Send each frame (JPEG q90 or PNG) after the previous one is answered; the answers, in order."""
    if params is not None:
        await client.send_json({"type": "params", "params": params})
        await client.expect("params_ok")
    answers = []
    for image in images:
        payload = b"" if image is None else encode_image(image, fmt, 90)
        kind = ImageFormat.NONE if image is None else ImageFormat.from_name(fmt)
        answers.append(await client.expect_output(await client.send_frame(payload, kind), timeout=30))
    return answers


def kinds(answers) -> str:
    """g: generated, s: skipped, r: reused; upper case: flagged SETTLING."""
    out = ""
    for a in answers:
        kind = "s" if a.flags & OutputFlag.SKIPPED else "r" if a.flags & OutputFlag.REUSED else "g"
        out += kind.upper() if a.flags & OutputFlag.SETTLING else kind
    return out


def skipped_count(server) -> float:
    return float(re.search(r'^sdxs_frames_total\{result="skipped"\} (\S+)$', server.get("/metrics").text, re.M)[1])


def test_still_frames_are_skipped_up_to_the_cap_motion_and_new_parameters_are_not(main_server):
    skipped_before = skipped_count(main_server)

    async def go():
        client = await Client.open(main_server.url, {"params": SKIP})
        still = await one_by_one(client, [scene(seed) for seed in range(9)])
        moved = await one_by_one(client, [scene(9, shift=6)])
        new_seed = await one_by_one(client, [scene(10, shift=6)], {"seed": 5})
        await client.close()
        return still, moved, new_seed

    still, moved, new_seed = asyncio.run(go())
    assert kinds(still) == "gsssgsssg" and kinds(moved) == "g" and kinds(new_seed) == "g"
    for answer in still:
        if answer.flags & OutputFlag.SKIPPED:
            assert answer.batch_size == 0 and answer.timings.inference_ms == 0
    assert still[1].payload == still[0].payload and still[5].payload == still[4].payload  # the last picture again
    deadline = time.monotonic() + 5
    while skipped_count(main_server) - skipped_before < 6:
        assert time.monotonic() < deadline, "sdxs_frames_total{result=skipped} did not count the skipped frames"
        time.sleep(0.05)


def test_a_skipped_frame_waits_for_its_picture_and_answers_keep_their_order(main_server):
    """Two frames in flight: the second, nearly the first, is skipped while the first is still in the model (a SLOW
    batch); it is answered after the first (whose answer it may replace on the way out: newest wins), with the
    first's picture, never with the older one before it."""

    async def go():
        client = await Client.open(main_server.url, {"params": {**SKIP, "prompt": "SLOW"}})
        (older,) = await one_by_one(client, [scene(0)])
        first = await client.send_frame(encode_image(scene(1, shift=8), "jpeg", 90), ImageFormat.JPEG)
        await asyncio.sleep(0.2)  # the first is in the model now
        second = await client.send_frame(encode_image(scene(2, shift=8), "jpeg", 90), ImageFormat.JPEG)
        await client.expect_output(second, timeout=30)
        answers = [o for o in client.outputs if o.frame_id in (first, second)]
        (again,) = await one_by_one(client, [scene(3, shift=8)])  # skipped once the first's picture is sent
        await client.close()
        return older, answers, again

    older, answers, again = asyncio.run(go())
    assert [a.frame_id for a in answers] == sorted(a.frame_id for a in answers)
    *_, skipped = answers
    assert kinds([skipped, again]) == "ss" and skipped.timings.queue_ms > 100  # it waited for the SLOW batch
    assert skipped.payload == again.payload != older.payload
    assert all(a.payload == skipped.payload for a in answers)


def test_settling_until_the_history_is_spent_then_skips(main_server):
    """feedback 0.5 needs 6 still frames before anything may be repeated; until then answers say SETTLING."""

    async def go():
        client = await Client.open(main_server.url, {"params": {**SKIP, "feedback": 0.5}})
        answers = await one_by_one(client, [scene(seed) for seed in range(9)])
        await client.close()
        return answers

    assert kinds(asyncio.run(go())) == "GGGGGGgss"


def test_a_smooth_prompt_change_goes_on_while_the_same_input_comes_and_ends_on_the_new_picture(main_server):
    """Text mode, 3 transition frames: REUSED never freezes a change half-way; the last picture is the new prompt's."""

    async def go():
        client = await Client.open(main_server.url, {"params": {"mode": "text", "prompt": "a cat",
                                                                "transition_frames": 3}, "output_format": "png"})
        before = await one_by_one(client, [None, None])
        after = await one_by_one(client, [None] * 4, {"prompt": "a red house"})
        await client.close()
        return before, after

    before, after = asyncio.run(go())
    assert kinds(before) == "gr" and kinds(after) == "GGgr"
    target = reference(main_server, [GenerationRequest(GenerationParams(mode="text", prompt="a red house"))])[0]
    assert np.abs(decode_image(after[2].payload).astype(int) - target.astype(int)).max() <= 1


def test_sessions_histories_are_their_own_batched_or_not_and_freed_at_the_end(main_server):
    """Two sessions with feedback and the bank stream at once (batched by the worker when their frames meet): each
    gets what the pipeline gives its own stream alone; when a session ends its history is released."""
    live = {"mode": "image", "feedback": 0.5, "bank": 1.0}
    shots = {k: [scene(10 * k + t, shift=3 * t) for t in range(3)] for k in (1, 2)}

    async def go():
        clients = [await Client.open(main_server.url, {"params": {**live, "seed": k}, "output_format": "png"})
                   for k in (1, 2)]
        connections = {c.session.id: c for c in main_server.state.connections}
        states = [connections[c.welcome["session_id"]].stream.live.temporal for c in clients]
        answers = await asyncio.gather(*(one_by_one(c, shots[k], fmt="png") for c, k in zip(clients, (1, 2))))
        for client in clients:
            await client.close()
        return answers, states

    answers, states = asyncio.run(go())
    for k, outs in zip((1, 2), answers):
        mine = TemporalState()
        p = GenerationParams(**live, seed=k)
        for out, shot in zip(outs, shots[k]):
            expected = reference(main_server, [GenerationRequest(p, shot, mine)])[0]
            assert np.abs(decode_image(out.payload).astype(int) - expected.astype(int)).max() <= 1
    deadline = time.monotonic() + 5
    while not all(s.closed and s.nbytes == 0 for s in states):
        assert time.monotonic() < deadline, "a session's history outlived it"
        time.sleep(0.05)
