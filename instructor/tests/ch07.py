"""Hidden tests for chapter 7 (pretraining from scratch). One point per test; each test is
self-contained (the grader runs every function on its own, its parameters filled from the
student's notebook)."""


def test_ex1_evaluations_after_the_loss(last_perplexity):
    """skips evaluation entries and the final summary logged after the last training loss"""
    import math

    history = [
        {"loss": 7.5, "step": 10},
        {"loss": 5.25, "step": 20},
        {"eval_loss": 4.75, "step": 20},
        {"train_runtime": 9.0, "train_loss": 6.0, "step": 20},
    ]
    got = last_perplexity([dict(e) for e in history])
    assert math.isclose(got, math.exp(5.25), rel_tol=1e-6), (
        f"{got}: expected exp(5.25); take the last entry with a 'loss' key (not eval_loss, train_loss)"
    )


def test_ex1_single_entry(last_perplexity):
    """a history with one logged loss, in nats (math.exp, not 2 **)"""
    import math

    got = last_perplexity([{"loss": 0.5, "step": 1}])
    assert math.isclose(got, math.exp(0.5), rel_tol=1e-6), f"{got}: expected exp(0.5)"


def test_ex2_value(answer):
    """the add-one unigram perplexity of the validation blocks (first token of each block unscored)"""
    import torch

    from course_lib import pretraining
    from course_lib.evaluation import corpus_ids

    with __import__("tempfile").TemporaryDirectory() as folder:
        tokenizer = pretraining.train_course_tokenizer(folder, vocab_size=4096)
        train = corpus_ids(tokenizer, "train")
        validation = corpus_ids(tokenizer, "validation")
    blocks = validation[: len(validation) // 128 * 128].view(-1, 128)
    counts = torch.bincount(train, minlength=len(tokenizer)).double() + 1
    log_probs = (counts / counts.sum()).log()
    expected = torch.exp(-log_probs[blocks[:, 1:]].mean()).item()
    assert abs(float(answer) - expected) <= 1e-4 * expected, f"{answer} is not {expected:.2f}"


def test_ex3_other_configs(llama_parameters):
    """matches LlamaForCausalLM on configs the public check does not try"""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    configs = [
        dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=3, intermediate_size=80),
        dict(
            hidden_size=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=24,
            tie_word_embeddings=True,
        ),
        dict(hidden_size=40, num_attention_heads=5, num_key_value_heads=5, num_hidden_layers=3),
    ]
    for fields in configs:
        config = LlamaConfig(vocab_size=97, intermediate_size=fields.pop("intermediate_size", 64), **fields)
        with torch.device("meta"):
            expected = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
        got = llama_parameters(config)
        assert got == expected, f"{got} != {expected} for {fields}"
