"""Hidden tests for chapter 9 (evaluation). One point per test; each test is self-contained (the
grader runs every function on its own, its parameters filled from the student's notebook)."""


def test_ex1_pooled_within_sequences(distinct_2):
    """bigrams are pooled over sequences, never across two of them; short sequences add none"""
    got = distinct_2([[1, 2, 1, 2], [2, 1], [5], [3, 4, 3, 4, 3]])
    # bigrams: (1,2) (2,1) (1,2) | (2,1) | - | (3,4) (4,3) (3,4) (4,3): 4 distinct of 8
    assert abs(float(got) - 4 / 8) < 1e-12, f"{got}, expected 0.5"


def test_ex1_all_distinct(distinct_2):
    """all bigrams distinct gives 1.0"""
    assert float(distinct_2([["a", "b", "c"], ["c", "a"]])) == 1.0, "expected 1.0"


def test_ex2_value(answer):
    """the perplexity of the text under the course LM, from one forward pass"""
    import math

    import torch

    from course_lib.exercises import ch09
    from course_lib.models import load_model, load_tokenizer

    model, tokenizer = load_model("causal-lm").eval(), load_tokenizer("causal-lm")
    ids = tokenizer(ch09.PERPLEXITY_TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert abs(float(answer) - math.exp(loss)) < 1e-3 * math.exp(loss), (
        f"{answer} is not the text's perplexity, {math.exp(loss):.3f}"
    )


def test_ex3_only_the_generated_text(StopAtNewline):
    """a newline in the prompt does not stop; one in the generated text stops that row only"""
    import torch

    from course_lib.models import load_tokenizer

    tokenizer = load_tokenizer("causal-lm")
    prompt = tokenizer("first line\nsecond", add_special_tokens=False)["input_ids"]
    broken = tokenizer(" end\nnext", add_special_tokens=False)["input_ids"]
    word = tokenizer(" word", add_special_tokens=False)["input_ids"][:1]
    ids = torch.tensor([prompt + word * len(broken), prompt + broken])
    stopper = StopAtNewline(tokenizer, len(prompt))
    done = stopper(ids, torch.zeros(2, len(tokenizer)))
    assert [bool(x) for x in done] == [False, True], (
        f"got {[bool(x) for x in done]}: only the row whose generated text holds a newline stops"
    )
