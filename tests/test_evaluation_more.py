"""Chapter 9's evaluation tools: sliding-window perplexity, generation metrics, decoding helpers."""
import copy
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from course_lib import evaluation
from course_lib.assets.pretrain import block_perplexity, pack_blocks
from course_lib.generation import (DECODING_STRATEGIES, REPETITION_CONTROLS, StopOnText, compare_decoding,
                                   decoding_config, generate_batch)
from course_lib.profiles import CourseError

PROMPTS = ["The module defines", "Return the", "class Queue"]


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("length,max_length,stride", [(37, 10, 4), (37, 10, 10), (10, 10, 3), (11, 10, 10),
                                                      (2, 5, 5), (100, 16, 1)])
def test_sliding_windows_score_every_token_once(length, max_length, stride):
    windows = evaluation.sliding_windows(length, max_length, stride)
    scored = [t for _, end, first in windows for t in range(first, end)]
    if stride == max_length:  # disjoint windows: a token that starts a window has no context
        assert scored == [t for t in range(1, length) if t % max_length != 0]
    else:
        assert scored == list(range(1, length))
    for begin, end, first in windows:
        assert end - begin <= max_length and begin < first < end
        if stride < max_length and begin > 0:
            assert first - begin >= max_length - stride  # every scored token has that much context


def test_sliding_windows_reject_bad_arguments():
    assert evaluation.sliding_windows(1, 8, 4) == []
    with pytest.raises(ValueError, match="max_length"):
        evaluation.sliding_windows(10, 1, 1)
    with pytest.raises(ValueError, match="stride"):
        evaluation.sliding_windows(10, 8, 9)


def _by_hand(model, sequence, max_length, stride):
    """Each scored token's log-probability from its own forward pass over exactly its context."""
    log_probs = []
    for begin, end, first in evaluation.sliding_windows(len(sequence), max_length, stride):
        for t in range(first, end):
            context = torch.tensor([sequence[begin:t]])
            with torch.no_grad():
                log_probs.append(model(input_ids=context).logits[0, -1].log_softmax(-1)[sequence[t]].item())
    return log_probs


@pytest.mark.parametrize("stride", [3, 10])
def test_sliding_window_perplexity_matches_a_hand_computation(tiny_lm, stride):
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 50, (37,), generator=generator).tolist(),
                 torch.randint(0, 50, (6,), generator=generator).tolist()]
    hand = [lp for s in sequences for lp in _by_hand(tiny_lm, s, 10, stride)]
    result = evaluation.perplexity_of_ids(tiny_lm, sequences, max_length=10, stride=stride, batch_size=3)
    assert result["scored tokens"] == len(hand)
    assert math.isclose(result["perplexity"], math.exp(-sum(hand) / len(hand)), rel_tol=1e-5)
    one_by_one = evaluation.perplexity_of_ids(tiny_lm, sequences, max_length=10, stride=stride, batch_size=1)
    assert math.isclose(one_by_one["perplexity"], result["perplexity"], rel_tol=1e-5)  # padding is masked


def test_one_window_is_the_models_own_loss(tiny_lm):
    sequence = list(range(1, 30))
    with torch.no_grad():
        loss = tiny_lm(input_ids=torch.tensor([sequence]), labels=torch.tensor([sequence])).loss
    result = evaluation.perplexity_of_ids(tiny_lm, [sequence], max_length=64)
    assert math.isclose(result["perplexity"], math.exp(loss.item()), rel_tol=1e-5)
    with pytest.raises(ValueError, match="Nothing to score"):
        evaluation.perplexity_of_ids(tiny_lm, [[5]], max_length=8)


def test_disjoint_windows_equal_block_perplexity(course_lm):
    model, tokenizer = course_lm
    stream = evaluation.corpus_ids(tokenizer, "validation")[: 128 * 12]
    blocks = pack_blocks(stream, 128)
    result = evaluation.perplexity_of_ids(model, [stream.tolist()], max_length=128, stride=128)
    assert math.isclose(result["perplexity"], block_perplexity(model, blocks), rel_tol=1e-4)
    assert result["windows"] == 12 and result["scored tokens"] == 12 * 127


def test_text_perplexity_is_token_weighted(course_lm):
    model, tokenizer = course_lm
    texts = ["Return the number of items in the dictionary. " * 6, "Sort a list."]
    weighted = evaluation.text_perplexity(model, tokenizer, texts, max_length=64, stride=32)
    singles = [evaluation.text_perplexity(model, tokenizer, [t], max_length=64, stride=32) for t in texts]
    nll = sum(math.log(s["perplexity"]) * s["scored tokens"] for s in singles)
    assert math.isclose(weighted["perplexity"], math.exp(nll / weighted["scored tokens"]), rel_tol=1e-5)
    mean = evaluation.mean_of_text_perplexities(model, tokenizer, texts, max_length=64, stride=32)
    assert math.isclose(mean, sum(s["perplexity"] for s in singles) / 2, rel_tol=1e-9)
    assert not math.isclose(mean, weighted["perplexity"], rel_tol=1e-2)
    with pytest.raises(ValueError, match="list of texts"):
        evaluation.text_perplexity(model, tokenizer, "one string")


def test_distinct_n_and_repetition_by_hand():
    sequences = [[1, 2, 3, 1, 2, 3], [4, 4]]
    assert evaluation.distinct_n(sequences, 1) == 4 / 8
    assert evaluation.distinct_n(sequences, 2) == 4 / 6  # (1,2) (2,3) (3,1) (4,4) of 6 bigrams
    assert evaluation.repetition_rate(sequences, 3) == 1 / 4  # (1,2,3) repeats once among 4 trigrams
    assert evaluation.repetition_rate([[1, 2, 3]], 3) == 0.0 and evaluation.distinct_n([[]], 2) == 0.0
    metrics = evaluation.generation_metrics(sequences)
    assert metrics == {"distinct-1": 0.5, "distinct-2": 0.667, "repeated 3-grams %": 25.0, "mean length": 4.0}
    with pytest.raises(ValueError, match="at least one"):
        evaluation.generation_metrics([])


def test_decoding_configs_are_valid_and_bad_ones_fail_clearly(course_lm):
    _, tokenizer = course_lm
    for strategy in DECODING_STRATEGIES.values():
        for control in [{}, *REPETITION_CONTROLS.values()]:
            config = decoding_config(tokenizer, 5, **strategy, **control)
            assert config.pad_token_id == tokenizer.pad_token_id
    with pytest.raises(CourseError, match="temperature"):
        decoding_config(tokenizer, do_sample=False, temperature=0.5)
    with pytest.raises(CourseError, match="max_new_tokens"):
        decoding_config(tokenizer, 0)


def test_generate_batch_matches_single_prompts(course_lm):
    model, tokenizer = course_lm
    batch = generate_batch(model, tokenizer, PROMPTS, {"do_sample": False}, max_new_tokens=12)
    assert tokenizer.padding_side == "right"  # restored
    for prompt, ids in zip(PROMPTS, batch):
        single = model.generate(**tokenizer(prompt, return_tensors="pt"),
                                generation_config=decoding_config(tokenizer, 12, do_sample=False))
        expected = [t for t in single[0, len(tokenizer(prompt)["input_ids"]):].tolist()]
        expected = expected[: expected.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in expected else expected
        assert ids == expected
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    assert generate_batch(model, no_pad, PROMPTS, {"do_sample": False}, max_new_tokens=12) == batch
    assert no_pad.pad_token is None and no_pad.padding_side == "right"
    sampled = generate_batch(model, tokenizer, PROMPTS, DECODING_STRATEGIES["top-p sampling (p=0.9)"], 12, seed=3)
    assert sampled == generate_batch(model, tokenizer, PROMPTS, DECODING_STRATEGIES["top-p sampling (p=0.9)"], 12,
                                     seed=3)


def test_stop_on_text_agrees_with_the_built_in_stop_strings(course_lm):
    model, tokenizer = course_lm
    stopped = generate_batch(model, tokenizer, PROMPTS, {"do_sample": False}, 40, stop_texts=["."])
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in stopped]
    for ids, text in zip(stopped, texts):
        assert len(ids) == 40 or ("." in text and "." not in tokenizer.decode(ids[:-1], skip_special_tokens=True))
    tokenizer.padding_side = "left"
    inputs = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    built_in = model.generate(**inputs, tokenizer=tokenizer,
                              generation_config=decoding_config(tokenizer, 40, do_sample=False, stop_strings=["."]))
    width = inputs["input_ids"].shape[1]
    assert texts == [tokenizer.decode(row[width:], skip_special_tokens=True) for row in built_in]
    with pytest.raises(CourseError, match="non-empty"):
        StopOnText(tokenizer, [""], 3)


def test_compare_decoding_and_no_repeat_ngrams(course_lm):
    model, tokenizer = course_lm
    settings = {"greedy": {"do_sample": False},
                "greedy + no_repeat_ngram_size=3": {"do_sample": False, "no_repeat_ngram_size": 3}}
    rows, texts = compare_decoding(model, tokenizer, PROMPTS, settings, max_new_tokens=30)
    assert [r["decoding"] for r in rows] == list(settings) and len(texts["greedy"]) == len(PROMPTS)
    assert rows[1]["repeated 3-grams %"] == 0.0
    assert rows[0]["repeated 3-grams %"] > 0.0  # greedy decoding of a small LM loops


def test_ch09_checks(course_lm):
    from transformers import StoppingCriteria

    from course_lib.exercises import ch09

    model, tokenizer = course_lm

    def distinct_2(sequences):
        grams = [tuple(s[i:i + 2]) for s in sequences for i in range(len(s) - 1)]
        return len(set(grams)) / len(grams)

    assert ch09.check_distinct_2(distinct_2).passed
    per_sequence = ch09.check_distinct_2(lambda seqs: sum(distinct_2([s]) for s in seqs) / len(seqs))
    assert not per_sequence.passed and "pool" in per_sequence.message

    text = ch09.PERPLEXITY_TEXT
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert ch09.check_text_perplexity(math.exp(loss), model, tokenizer).passed
    assert not ch09.check_text_perplexity(loss, model, tokenizer).passed

    class StopAtNewline(StoppingCriteria):
        def __init__(self, tokenizer, prompt_length):
            self.tokenizer, self.prompt_length = tokenizer, prompt_length

        def __call__(self, input_ids, scores, **kwargs):
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:])
            return torch.tensor(["\n" in t for t in texts], dtype=torch.bool)

    class NeverStop(StoppingCriteria):
        def __init__(self, tokenizer, prompt_length):
            pass

        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    assert ch09.check_newline_stopper(StopAtNewline, model, tokenizer).passed
    assert not ch09.check_newline_stopper(NeverStop, model, tokenizer).passed
