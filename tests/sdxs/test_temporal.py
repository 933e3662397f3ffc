"""Live video (issue 23) in the pipeline: a stream's history is its own however streams are batched, costs nothing
when unused, stays bounded and is freed; smooth changes reach the new picture exactly; the bank's tensors are inputs
of the compiled UNet (no recompile per stream), and with CUDA graphs every path is warmed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdxs import GenerationParams, GenerationRequest, SDXSPipeline, bank
from sdxs.temporal import Fade, TemporalState, settle_frames

LIVE = {"feedback": 0.5, "bank": 1.0, "transition_frames": 3}


def frames(photo, n: int, seed: int) -> list[np.ndarray]:
    """`n` frames of `photo` with sensor-like noise, different for each seed."""
    rng = np.random.default_rng(seed)
    base = np.asarray(photo, np.float32)
    return [np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def stream(pipe, inputs: list[list[tuple[GenerationParams, np.ndarray]]]) -> list[list[np.ndarray]]:
    """Several streams, frame t of every stream in ONE call; returns each stream's outputs."""
    states = [TemporalState() for _ in inputs]
    outs = [[] for _ in inputs]
    for t in range(len(inputs[0])):
        requests = [GenerationRequest(p, image, s) for s, (p, image) in zip(states, (x[t] for x in inputs))]
        for out, image in zip(outs, pipe(requests, output_type="np")):
            out.append(image.astype(int))
    return outs


def session(photo, seed: int, prompts=("a cat", "a dog", "a dog", "a dog")):
    return [(GenerationParams(prompt=p, mode="image", seed=seed, **LIVE), f)
            for p, f in zip(prompts, frames(photo, len(prompts), seed))]


def test_a_stream_alone_and_batched_with_others_gives_the_same_frames(pipe, photo):
    """Feedback, bank and a prompt transition: the others' frames never reach this stream's (bitwise with the same
    batch shape, within one level of a batch of one)."""
    mine = session(photo, 1)
    alone = stream(pipe, [mine])[0]
    with_b = stream(pipe, [mine, session(photo, 2), session(photo, 3, ("a bird",) * 4)])[0]
    with_c = stream(pipe, [mine, session(photo, 4, ("a tree",) * 4), session(photo, 5)])[0]
    assert all(np.array_equal(a, b) for a, b in zip(with_b, with_c)), "another stream's content changed mine"
    assert max(np.abs(a - b).max() for a, b in zip(alone, with_b)) <= 1
    assert max(np.abs(a - b).mean() for a, b in zip(alone, alone[1:])) > 0  # the stream did change over time


def test_a_state_without_remedies_changes_nothing(pipe, photo):
    shots = frames(photo, 3, 7)
    p = GenerationParams(prompt="a cat", mode="image")
    state = TemporalState()
    with_state = [pipe([GenerationRequest(p, f, state)], output_type="np")[0] for f in shots]
    without = [pipe([GenerationRequest(p, f)], output_type="np")[0] for f in shots]
    assert all(np.array_equal(a, b) for a, b in zip(with_state, without))
    assert state.nbytes == 0 and state.settled_for(p)


def test_the_bank_processor_attends_to_the_rows_own_bank_only():
    """Extended self-attention by hand: row 0 over its frame and its 2-slot bank (strength 0.5), row 1 (no slot
    written) exactly the plain attention; the frame's keys and values come out for the ring."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    hidden = torch.randn(2, 5, 8)
    keys, values = torch.randn(2, bank.BANK_FRAMES * 5, 8), torch.randn(2, bank.BANK_FRAMES * 5, 8)
    bias = torch.tensor([[np.log(0.5)] * bank.BANK_FRAMES, [-np.inf] * bank.BANK_FRAMES])
    kwarg = {"keys": [keys], "values": [values], "bias": bias, "out": {}}
    with torch.no_grad():
        out = bank.BankProcessor(AttnProcessor2_0(), 0)(attn, hidden, bank=kwarg)
        plain = AttnProcessor2_0()(attn, hidden)
        q, k, v = attn.to_q(hidden[:1]), attn.to_k(hidden[:1]), attn.to_v(hidden[:1])
        k, v = torch.cat([k, keys[:1]], 1), torch.cat([v, values[:1]], 1)
        heads = [slice(0, 4), slice(4, 8)]
        weight = torch.cat([torch.ones(5), torch.full((bank.BANK_FRAMES * 5,), 0.5)])
        mixed = []
        for h in heads:
            scores = (q[0, :, h] @ k[0, :, h].T / 2.0).exp() * weight  # 1 / sqrt(dim_head)
            mixed.append((scores / scores.sum(1, keepdim=True)) @ v[0, :, h])
        by_hand = attn.to_out[0](torch.cat(mixed, 1))
    torch.testing.assert_close(out[1], plain[1])
    torch.testing.assert_close(out[0], by_hand, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], plain[0], atol=1e-3)
    torch.testing.assert_close(kwarg["out"][0][0], attn.to_k(hidden))


def test_the_bank_is_bounded_changes_later_frames_and_is_freed(pipe, photo):
    shots = frames(photo, 5, 8)
    p = GenerationParams(prompt="a cat", mode="image", bank=1.0)
    state = TemporalState()
    banked = [pipe([GenerationRequest(p, f, state)], output_type="np")[0].astype(int) for f in shots]
    plain = [image.astype(int) for image in pipe([GenerationRequest(p.model_copy(update={"bank": 0.0}), f)
                                                 for f in shots], output_type="np")]
    assert np.abs(banked[0] - plain[0]).max() <= 1, "an empty bank must leave the first frame as it was"
    assert any(not np.array_equal(a, b) for a, b in zip(banked[1:], plain[1:])), "the bank had no effect"
    full = bank.bytes_per_stream(pipe.bank_layers, pipe.size // pipe.vae_scale_factor, pipe.dtype)
    assert state.bank.nbytes == full and state.bank.written == len(shots) and full > 0
    state.release()
    assert state.nbytes == 0 and state.closed


@pytest.mark.parametrize("what", ["prompt", "seed"])
def test_a_smooth_change_moves_step_by_step_and_lands_on_the_new_picture(pipe, what):
    before, after = {"prompt": ("a cat", "a red house"), "seed": (1, 2)}[what]
    p = [GenerationParams(mode="text", transition_frames=3, **{what: before if t < 2 else after}) for t in range(6)]
    state = TemporalState()
    out = [pipe([GenerationRequest(q, None, state)], output_type="np")[0].astype(int) for q in p]
    target = pipe([GenerationRequest(p[-1])], output_type="np")[0].astype(int)
    distance = [np.abs(o - target).mean() for o in out]
    assert distance[1] > distance[2] > distance[3] > 0, distance  # two steps under way...
    assert distance[4] == distance[5] == 0, distance  # ...then exactly the new picture
    assert state.settled
    abrupt = TemporalState()
    jump = [pipe([GenerationRequest(q.model_copy(update={"transition_frames": 0}), None, abrupt)], output_type="np")[0]
            for q in p[1:3]]
    assert np.array_equal(jump[1], target.astype(np.uint8)), "without smooth changes the change is at once"


def test_a_style_fade_and_settling():
    fade = Fade()
    weights = [fade.advance(style, 4) for style in (None, None, "anime", "anime", "anime", "anime", "anime")]
    assert weights == [0, 0, 0.75, 0.5, 0.25, 0, 0] and not fade.moving
    assert settle_frames(GenerationParams(feedback=0.5)) == 6 and settle_frames(GenerationParams()) == 0
    state = TemporalState()
    for still in (True, False, True, True):
        state.note_input(still)
    assert state.still == 2


def test_two_requests_of_one_stream_cannot_share_a_batch(pipe, photo):
    state = TemporalState()
    with pytest.raises(ValueError, match="one frame per stream"):
        pipe([GenerationRequest(GenerationParams(mode="image"), photo, state)] * 2)


def test_the_banks_enter_the_compiled_unet_as_inputs_so_no_stream_recompiles_it(tiny_model_dir, photo):
    """dynamo traces the UNet with the bank once; streams with other histories (empty, full) replay that graph."""
    from sdxs.graphs import GraphActivity

    compiled = SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")
    compiled.unet = torch.compile(compiled.unet, backend="eager", dynamic=False)
    p = GenerationParams(mode="image", prompt="a cat", feedback=0.5, bank=1.0)
    first, second = TemporalState(), TemporalState()
    compiled([GenerationRequest(p, photo, first)])  # traces
    with GraphActivity() as activity:
        for f in frames(photo, 3, 9):
            compiled([GenerationRequest(p, f, first)])
        compiled([GenerationRequest(p, photo, second)])
    assert activity.result.compiles == 0, activity.result.as_dict()


@pytest.mark.cuda
def test_with_cuda_graphs_every_live_path_is_warmed_and_equals_the_eager_pipeline(tiny_model_dir):
    """After the warm-up, streams with histories (bank and feedback) at batch 1 and 3 record and compile nothing, and
    their frames equal the eager pipeline's with its own histories within one level."""
    from sdxs.graphs import GraphActivity

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    eager = SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32")
    graphs = SDXSPipeline.from_pretrained(str(tiny_model_dir), device="cuda", dtype="float32",
                                          compile="reduce-overhead")
    graphs.buckets = (1, 2, 4)
    assert graphs.warmup(graphs.buckets).passes[-1].quiet
    still = np.random.default_rng(0).integers(0, 255, (graphs.size, graphs.size, 3), dtype=np.uint8)
    for mode in ("text", "image", "sketch"):
        for n in (1, 3):
            states = {pipe: [TemporalState() for _ in range(n)] for pipe in (eager, graphs)}
            with GraphActivity() as activity:
                for t in range(3):
                    p = GenerationParams(mode=mode, seed=t, feedback=0.5, bank=1.0, transition_frames=2)
                    outs = {pipe: pipe([GenerationRequest(p, None if mode == "text" else still, s)
                                        for s in states[pipe]], output_type="np") for pipe in (eager, graphs)}
                    for a, b in zip(outs[graphs], outs[eager]):
                        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1, (mode, n, t)
            assert activity.result.quiet, (mode, n, activity.result.as_dict())


def test_the_schema_offers_live_video_with_ranges_live_defaults_and_presets():
    """One schema drives the page, Gradio and the protocol: each live-video field has a title, a description, a
    range, and a live default inside it; the presets and the live defaults are parameters the server accepts."""
    from sdxs.params import live_defaults

    schema = GenerationParams.model_json_schema()
    fields = ("feedback", "bank", "transition_frames", "skip_threshold", "skip_max")
    for name in fields:
        prop = schema["properties"][name]
        assert prop["title"] and prop["description"] and prop["minimum"] <= prop["live_default"] <= prop["maximum"]
        assert GenerationParams().model_dump()[name] == prop["default"]
    assert set(live_defaults()) == set(fields) and live_defaults()["skip_threshold"] > 0
    presets = schema["stability_presets"]
    assert schema["live_stability"] in presets and presets["off"] == {"feedback": 0.0, "bank": 0.0}
    for values in presets.values():
        GenerationParams(**values, **{k: v for k, v in live_defaults().items() if k not in values})
    live = presets[schema["live_stability"]]
    assert {k: live_defaults()[k] for k in live} == live  # a live client starts on the live preset
