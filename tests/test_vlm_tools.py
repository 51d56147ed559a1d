"""Multi-turn rollouts whose tools return images, on tiny random VLMs (Qwen2-VL and Idefics3).

A scripted first turn calls a zoom tool; the real policy writes the second turn. The image observation's tokens are
masked and are exactly the processor's expansion of the returned image; the row's vision inputs hold both images in
order; the scoring forward's log-probs of the second turn equal the ones `generate` computed (it saw the same
images); bad calls become counted error observations.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from modules.policy import Policy
from modules.rollout.engine import SamplingSettings
from modules.rollout.multiturn import MultiTurnToolEngine
from modules.vision import encode_observation, image_placeholder, sample_frames

pytestmark = pytest.mark.usefixtures("one_thread")
ARCHS = ["qwen2_vl", "idefics3"]




@pytest.fixture(params=ARCHS)
def policy(request, tiny_vlm):
    return Policy.from_pretrained(tiny_vlm(request.param))


def zoom(arguments: str, row: dict) -> Image.Image:
    box = json.loads(arguments)["box"]
    image = row["images_seen"][-1]
    w, h = image.size
    if not 0 <= box[0] < box[2] <= 1:
        raise ValueError(f"box={box}: need 0 <= x1 < x2 <= 1")
    return image.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h))).resize((112, 112))


def _screen():
    img = Image.new("RGB", (224, 168), "white")
    img.paste((200, 30, 30), (20, 20, 90, 60))
    return img


def _call(args: dict, name: str = "zoom") -> str:
    return f'<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


def _scripted(engine, script: list[str | None], captured: list | None = None):
    """Turn k of every row writes script[k] (None: the real policy samples it, greedy, logits captured)."""
    original = engine._generate_turn
    turn = {"k": 0}
    tok = engine.policy.tokenizer

    def fake(contexts, max_new_tokens, greedy, vision=None):
        text = script[turn["k"]]
        turn["k"] += 1
        if text is not None:
            return [tok(text, add_special_tokens=False)["input_ids"] for _ in contexts]
        model = engine.policy.model
        generate = model.generate

        def recording(**kwargs):
            out = generate(**kwargs, output_logits=True, return_dict_in_generate=True)
            captured.append(torch.stack(out.logits, 1).float())  # (n, T, V) raw logits
            return out.sequences

        model.generate = recording
        try:
            return original(contexts, max_new_tokens, greedy, vision=vision)
        finally:
            del model.generate

    engine._generate_turn = fake
    return engine


def test_image_observations_are_masked_placeholders_and_scoring_sees_every_image(policy):
    engine = MultiTurnToolEngine(policy, SamplingSettings(max_new_tokens=80), tools={"zoom": zoom}, call_format="chat",
                                 max_turns=2)
    captured: list = []
    _scripted(engine, [_call({"box": [0.0, 0.0, 0.5, 0.5]}), None], captured)
    batch = engine.generate(["Find the red box."], {"images": [[_screen()]]}, num_generations=2, greedy=True)
    row_ids, trained, real = batch.completion_ids[0], batch.completion_mask[0], batch.completion_attention_mask[0]
    observed = row_ids[(real == 1) & (trained == 0)].tolist()
    crop = zoom(json.dumps({"box": [0.0, 0.0, 0.5, 0.5]}), {"images_seen": [_screen()]})
    expected, _ = encode_observation(policy.processor, engine.call_format.render(image_placeholder(policy.processor)),
                                     [crop])
    assert observed == expected  # the masked tokens are exactly the expanded observation
    image_id = policy.vision.image_token_id
    assert (row_ids[trained == 1] == image_id).sum() == 0 and (torch.tensor(observed) == image_id).sum() > 0
    vision = batch.vision[0]
    n_images = vision["image_grid_thw"].shape[0] if "image_grid_thw" in vision else vision["pixel_values"].shape[1]
    assert n_images == 2  # the prompt's screen, then the crop
    assert batch.columns["tool_calls"] == [1, 1] and batch.columns["last_tool_error"] == [False, False]
    assert batch.stats["tool_images"] == 2.0
    # the second turn: generate's log-probs (it saw both images) equal the scoring forward's
    (start, end), = [span for span in batch.turn_spans[0][1:]]
    with torch.no_grad():
        logps, _ = policy.token_logps(batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                      batch.completion_attention_mask, vision=batch.vision)
    logits = captured[0][0, :end - start]  # row 0 of the turn-2 call
    generated = torch.log_softmax(logits, -1).gather(-1, row_ids[start:end, None])[:, 0]
    torch.testing.assert_close(logps[0, start:end], generated, atol=1e-4, rtol=0)


def test_bad_calls_are_counted_error_observations_and_a_fix_clears_the_flag(policy):
    engine = MultiTurnToolEngine(policy, SamplingSettings(max_new_tokens=80), tools={"zoom": zoom}, call_format="chat",
                                 max_turns=3, max_total_tokens=500)
    _scripted(engine, [_call({"box": [0.6, 0.0, 0.2, 0.5]}), _call({"box": [0.0, 0.0, 0.5, 0.5]}), "done<|im_end|>"])
    fixed = engine.generate(["Zoom."], {"images": [[_screen()]]}, num_generations=1)
    assert fixed.columns["tool_calls"] == [2] and fixed.columns["tool_errors"] == [1]
    assert fixed.columns["last_tool_error"] == [False]
    assert "box=[0.6, 0.0, 0.2, 0.5]: need 0 <= x1 < x2 <= 1" in fixed.completions[0]
    for script, message in [([_call({"box": [0, 0, 1, 1]}, name="pan"), "done<|im_end|>"], "unknown tool 'pan'"),
                            (["<tool_call>{not json</tool_call>", "done<|im_end|>"], "not valid JSON")]:
        engine = MultiTurnToolEngine(policy, SamplingSettings(max_new_tokens=80), tools={"zoom": zoom},
                                     call_format="chat", max_turns=2)
        _scripted(engine, script)
        batch = engine.generate(["Zoom."], {"images": [[_screen()]]}, num_generations=1)
        assert batch.columns["tool_errors"] == [1] and batch.columns["last_tool_error"] == [True]
        assert message in batch.completions[0] and batch.stats["tool_errors"] == 1.0


def test_an_image_that_does_not_fit_the_budget_ends_the_row_uncut(policy):
    engine = MultiTurnToolEngine(policy, SamplingSettings(max_new_tokens=80), tools={"zoom": zoom},
                                 call_format="chat", max_turns=2, max_total_tokens=100)
    _scripted(engine, [_call({"box": [0.0, 0.0, 0.5, 0.5]}), None], [])
    batch = engine.generate(["Zoom."], {"images": [[_screen()]]}, num_generations=1)
    assert bool(batch.truncated[0]) and len(batch.turn_spans[0]) == 1
    assert (batch.completion_ids[0] == policy.vision.image_token_id).sum() == 0  # no partial image
    n_images = (batch.vision[0]["image_grid_thw"].shape[0] if "image_grid_thw" in batch.vision[0]
                else batch.vision[0]["pixel_values"].shape[1])
    assert n_images == 1


def test_frame_lists_are_sampled_evenly_within_the_budget():
    frames = [Image.new("RGB", (28, 28), (i * 10, 0, 0)) for i in range(16)]
    kept = sample_frames(frames, 4)
    assert [f.getpixel((0, 0))[0] for f in kept] == [0, 50, 100, 150]
    assert sample_frames(frames[:3], 8) == frames[:3]
    with pytest.raises(ValueError, match="frame budget 0"):
        sample_frames(frames, 0)
