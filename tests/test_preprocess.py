"""Prompt tokenization, observation preprocessing and action unnormalization (openpi's pi05 arithmetic).

A real sentencepiece model is trained here on a few sentences (PaliGemma's layout: pad 0, eos 1, bos 2) so the file
path is exercised without the 4 MB PaliGemma file; openpi-client's own resize_with_pad is the reference for ours.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from openpi_client import image_tools

from triforce.errors import TriforceError
from triforce.runtime.config import load_config
from triforce.runtime.observation import check_observation
from triforce.runtime.preprocess import (Preprocessor, load_io_spec, load_norm_stats, normalize_state, parse_image,
                                         resize_with_pad, unnormalize_actions)
from triforce.runtime.tokenizer import (ByteTokenizer, SentencePieceTokenizer, discretize_state, load_tokenizer,
                                        prompt_pieces)

CORPUS = ["pick up the black bowl and place it on the plate", "Task: reach red, State: 1 2 3 255;\nAction: ",
          "open the top drawer", "turn on the stove"] * 40


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory):
    import sentencepiece

    path = tmp_path_factory.mktemp("sp") / "tiny.model"
    with open(path, "wb") as f:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS), model_writer=f, vocab_size=80, model_type="bpe", pad_id=0, eos_id=1,
            bos_id=2, unk_id=3, user_defined_symbols=["\n"], normalization_rule_name="identity",
            remove_extra_whitespaces=False, minloglevel=2)
    return path, sentencepiece.SentencePieceProcessor(model_file=str(path))


def _stats_file(tmp_path, state_q=([0.0] * 8, [2.0] * 8), action_q=([-1.0] * 7, [3.0] * 7)):
    path = tmp_path / "norm_stats.json"
    stats = {name: {"mean": [0.0] * len(q[0]), "std": [1.0] * len(q[0]), "q01": q[0], "q99": q[1]}
             for name, q in (("state", state_q), ("actions", action_q))}
    path.write_text(json.dumps({"norm_stats": stats}))
    return path


def _libero_obs(h=256, w=256, prompt="pick bowl"):
    rng = np.random.default_rng(0)
    return {"observation/image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "observation/state": rng.standard_normal(8), "prompt": prompt}


# ── tokenizer ───────────────────────────────────────────────────────────────────────────────────────────────────────
def test_state_bins_match_openpi_convention():
    assert discretize_state(np.array([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0])).tolist() == [-1, 0, 128, 255, 255, 255]


def test_prompt_formats():
    assert prompt_pieces(" pick_up\nbowl ", None) == ["pick up bowl", "\n"]
    assert prompt_pieces("reach red", np.array([-1.0, 0.0, 1.0])) == ["Task: reach red, State: 0 128 255;\nAction: "]


def test_sentencepiece_prompt_without_state(sp_model):
    path, sp = sp_model
    tok = SentencePieceTokenizer(path, max_len=48, vocab_size=100)
    tokens, mask = tok.tokenize("pick up the black_bowl", None)
    expected = [2] + sp.encode("pick up the black bowl") + sp.encode("\n")
    assert sp.piece_to_id("\n") in sp.encode("\n")  # the newline is its own piece, encoded separately
    assert tokens.dtype == np.int32 and mask.dtype == np.bool_ and tokens.shape == mask.shape == (48,)
    assert tokens[: len(expected)].tolist() == expected and mask.sum() == len(expected) and not tokens[len(expected):].any()


def test_sentencepiece_prompt_with_state(sp_model):
    path, sp = sp_model
    tokens, mask = SentencePieceTokenizer(path, 200, 100).tokenize("reach red", np.array([-0.99, 0.0, 1.0]))
    expected = [2] + sp.encode("Task: reach red, State: 1 128 255;\nAction: ")
    assert tokens[: mask.sum()].tolist() == expected


def test_byte_standin(sp_model):
    tok = ByteTokenizer(max_len=16, vocab_size=512)
    tokens, mask = tok.tokenize("hi", None)
    assert tokens[:4].tolist() == [2, 3 + ord("h"), 3 + ord("i"), 3 + ord("\n")] and mask.sum() == 4
    with pytest.raises(TriforceError, match="more than max_token_len=16"):
        tok.tokenize("a prompt far longer than sixteen bytes", None)
    with pytest.raises(TriforceError, match="at least 259"):
        ByteTokenizer(16, vocab_size=100)


def test_tokenizer_selection_and_bad_files(sp_model, tmp_path):
    assert load_tokenizer(None, max_len=16, vocab_size=512, synthetic=True).kind == "byte-standin"
    assert load_tokenizer(None, max_len=16, vocab_size=512, synthetic=False) is None
    assert load_tokenizer(sp_model[0], max_len=16, vocab_size=512, synthetic=True).kind == "sentencepiece"
    with pytest.raises(TriforceError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.model", max_len=16, vocab_size=512, synthetic=False)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(TriforceError, match="not a sentencepiece model"):
        load_tokenizer(junk, max_len=16, vocab_size=512, synthetic=False)
    with pytest.raises(TriforceError, match="embeds only 50"):
        SentencePieceTokenizer(sp_model[0], 16, vocab_size=50)


# ── norm stats ──────────────────────────────────────────────────────────────────────────────────────────────────────
def test_quantile_unnormalize_and_normalize(tmp_path):
    stats = load_norm_stats(_stats_file(tmp_path))
    actions = np.full((2, 32), 0.5)
    out = unnormalize_actions(actions, stats["actions"])
    # (0.5 + 1) / 2 * (3 - -1 + 1e-6) + -1 on the 7 dims the stats cover; the padding dims pass through
    assert np.allclose(out[:, :7], 2.0 + 0.75e-6) and np.allclose(out[:, 7:], 0.5)
    assert np.allclose(normalize_state(np.array([0.0, 1.0, 2.0]), stats["state"]), [-1.0, 0.0, 1.0], atol=1e-5)


@pytest.mark.parametrize("stats, message", [
    (None, "no norm stats"),
    ({"norm_stats": {"actions": {"q01": [0], "q99": [1]}}}, "missing or bad 'state'"),
    ({"norm_stats": {"state": {"mean": [0]}, "actions": {"mean": [0]}}}, "missing or bad 'q01'"),
    ({"norm_stats": {s: {"q01": [1.0, 0.0], "q99": [0.0, 1.0]} for s in ("state", "actions")}}, "q99 below q01 in dims \\[0\\]"),
    ({"norm_stats": {s: {"q01": [0.0], "q99": [0.0, 1.0]} for s in ("state", "actions")}}, "one length"),
])
def test_bad_norm_stats(tmp_path, stats, message):
    path = tmp_path / "norm_stats.json"
    if stats is not None:
        path.write_text(json.dumps(stats))
    with pytest.raises(TriforceError, match=message):
        load_norm_stats(path)


# ── images ──────────────────────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("shape", [(256, 256), (120, 200), (300, 90), (224, 224)])
def test_resize_with_pad_matches_openpi(shape):
    img = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(resize_with_pad(img, 224), image_tools.resize_with_pad(img, 224, 224))


def test_degenerate_image_is_refused():
    with pytest.raises(TriforceError, match="vanishes"):
        resize_with_pad(np.zeros((1, 1000, 3), np.uint8), 224)


def test_parse_image_conversions():
    chw = np.zeros((3, 10, 12), np.uint8)
    assert parse_image(chw, "k").shape == (10, 12, 3)
    assert parse_image(np.full((4, 4, 3), 0.5, np.float32), "k").max() == 127
    for bad, message in [(np.zeros((4, 4)), "expected an image"), (np.zeros((4, 4, 4), np.uint8), "RGB"),
                         (np.full((4, 4, 3), 2.0), "outside \\[0, 1\\]"), (np.zeros((4, 4, 3), np.int64), "dtype int64")]:
        with pytest.raises(TriforceError, match=message):
            parse_image(bad, "k")


# ── whole observation ───────────────────────────────────────────────────────────────────────────────────────────────
def test_libero_observation_passes_runtime_checks():
    cfg = load_config("pi05_tiny")
    pre = Preprocessor(load_io_spec("pi05_tiny"), cfg, ByteTokenizer(cfg.max_token_len, cfg.vocab_size), None)
    raw = _libero_obs()
    obs = pre.observation(raw)
    assert set(obs.images) == {"base_0_rgb", "left_wrist_0_rgb"}  # right wrist: masked zeros in the runtime
    expected = resize_with_pad(raw["observation/image"], 224).astype(np.float32) / 255 * 2 - 1
    assert np.array_equal(obs.images["base_0_rgb"], expected)
    checked = check_observation(obs, cfg)
    assert checked.image_masks.tolist() == [True, True, False] and checked.num_tokens == 1 + len("pick bowl") + 1


def test_droid_state_goes_into_the_prompt_normalized(tmp_path):
    cfg = load_config("pi05_droid")
    stats = load_norm_stats(_stats_file(tmp_path))
    tok = ByteTokenizer(cfg.max_token_len, cfg.vocab_size)
    pre = Preprocessor(load_io_spec("pi05_droid"), cfg, tok, stats)
    obs = {"observation/exterior_image_1_left": np.zeros((180, 320, 3), np.uint8),
           "observation/wrist_image_left": np.zeros((180, 320, 3), np.uint8),
           "observation/joint_position": np.zeros(7), "observation/gripper_position": np.float64(2.0), "prompt": "go"}
    out = pre.observation(obs)
    # state (q01 0, q99 2) normalizes 0 -> -1 (bin 0) and 2 -> ~1 (bin 255)
    expected, _ = tok.tokenize("go", np.array([-1.0] * 7 + [1.0]))
    assert np.array_equal(out.tokens, expected)
    assert "State: 0 0 0 0 0 0 0 255;" in prompt_pieces("go", normalize_state(pre.state(obs), stats["state"]))[0]


def test_actions_unnormalized_and_cut(tmp_path):
    cfg = load_config("pi05_tiny")
    pre = Preprocessor(load_io_spec("pi05_tiny"), cfg, None, load_norm_stats(_stats_file(tmp_path)))
    out = pre.actions(np.full((cfg.action_horizon, cfg.action_dim), -1.0, np.float32))
    assert out.shape == (cfg.action_horizon, 7) and out.dtype == np.float32 and np.allclose(out, -1.0)
    with pytest.raises(TriforceError, match="expected \\(5, 32\\)"):
        pre.actions(np.zeros((5, 7)))


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.pop("observation/wrist_image"), "lacks \\['observation/wrist_image'\\]"),
    (lambda o: o.update({"observation/state": np.zeros(7)}), "has 7 values: expected 8"),
    (lambda o: o.update({"observation/state": np.full(8, np.nan)}), "NaN"),
    (lambda o: o.update({"observation/state": "x"}), "not numeric"),
    (lambda o: o.update({"prompt": 3}), "'prompt' is a int"),
    (lambda o: o.pop("prompt"), "no 'prompt'"),
    (lambda o: o.update({"tokenized_prompt": np.array([2, 5])}), "both 'prompt' and 'tokenized_prompt'"),
    (lambda o: o.update({"prompt": "x" * 40}), "more than max_token_len=16"),
    (lambda o: o.update({"observation/image": np.zeros((8, 8), np.uint8)}), "expected an image"),
])
def test_malformed_observations(mutate, message):
    cfg = load_config("pi05_tiny")
    pre = Preprocessor(load_io_spec("pi05_tiny"), cfg, ByteTokenizer(cfg.max_token_len, cfg.vocab_size), None)
    obs = _libero_obs()
    mutate(obs)
    with pytest.raises(TriforceError, match=message):
        pre.observation(obs)


def test_real_checkpoint_without_tokenizer_takes_only_token_ids():
    cfg = load_config("pi05_tiny")
    pre = Preprocessor(load_io_spec("pi05_tiny"), cfg, None, None)
    with pytest.raises(TriforceError, match="no tokenizer.*--tokenizer"):
        pre.observation(_libero_obs())
    obs = _libero_obs()
    del obs["prompt"]
    obs.update(tokenized_prompt=np.array([2, 9, 10], np.int32), tokenized_prompt_mask=np.ones(3, bool))
    assert check_observation(pre.observation(obs), cfg).num_tokens == 3


def test_unserved_config_and_not_a_dict():
    with pytest.raises(TriforceError, match="no I/O spec for model config 'pi05_base'"):
        load_io_spec("pi05_base")
    cfg = load_config("pi05_tiny")
    with pytest.raises(TriforceError, match="observation is a list"):
        Preprocessor(load_io_spec("pi05_tiny"), cfg, None, None).observation([1, 2])
