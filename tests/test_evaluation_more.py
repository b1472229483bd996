"""Chapter 9's evaluation tools: sliding-window perplexity and generation metrics."""

import math

import pytest
import torch
from conftest import tiny_llama_config
from transformers import LlamaForCausalLM

from course_lib import evaluation
from course_lib.assets.pretrain import block_perplexity, pack_blocks


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=50)).eval()


@pytest.mark.parametrize(
    "length,max_length,stride",
    [(37, 10, 4), (37, 10, 10), (10, 10, 3), (11, 10, 10), (2, 5, 5), (100, 16, 1)],
)
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
    sequences = [
        torch.randint(0, 50, (37,), generator=generator).tolist(),
        torch.randint(0, 50, (6,), generator=generator).tolist(),
    ]
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


def test_held_out_perplexity_is_block_perplexity_and_its_variants_score_the_same_tokens(course_lm):
    model, tokenizer = course_lm
    blocks = pack_blocks(evaluation.corpus_ids(tokenizer, "validation"), 128)[:6]
    disjoint = evaluation.held_out_perplexity(model, tokenizer, max_blocks=6)
    assert math.isclose(disjoint["perplexity"], block_perplexity(model, blocks), rel_tol=1e-4)
    assert disjoint["scored tokens"] == 6 * 127
    sliding = evaluation.held_out_perplexity(model, tokenizer, stride=64, max_blocks=6)
    assert sliding["scored tokens"] == 6 * 128 - 1 and sliding["windows"] > disjoint["windows"]


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


def test_ch09_checks(course_lm):
    from transformers import StoppingCriteria

    from course_lib.exercises import ch09

    model, tokenizer = course_lm

    def distinct_2(sequences):
        grams = [tuple(s[i : i + 2]) for s in sequences for i in range(len(s) - 1)]
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
            texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :])
            return torch.tensor(["\n" in t for t in texts], dtype=torch.bool)

    class NeverStop(StoppingCriteria):
        def __init__(self, tokenizer, prompt_length):
            pass

        def __call__(self, input_ids, scores, **kwargs):
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    assert ch09.check_newline_stopper(StopAtNewline, model, tokenizer).passed
    assert not ch09.check_newline_stopper(NeverStop, model, tokenizer).passed
