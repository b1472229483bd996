"""Hidden tests for chapter 6 (data preparation). One point per test; each test is self-contained
(otter-grader runs every function on its own, its parameters filled from the student's notebook)."""


def test_ex1_order(dedup):
    """keeps the first occurrence of each text, in order"""
    got = list(dedup(["b", "a", "b", "c", "a"]))
    assert got == ["b", "a", "c"], f"expected ['b', 'a', 'c'], got {got}"


def test_ex1_cleaned_variants(dedup):
    """cleans before comparing: whitespace and line-end variants are duplicates"""
    from course_lib import prep

    texts = [
        "Open a file.",
        "Open a file.  \r\n",
        "\x00Open a file.",
        "Sort.\r\n\r\n\r\nNow.",
        "Sort.\n\nNow.",
    ]
    expected = [t for t in dict.fromkeys(prep.clean_text(t) for t in texts) if t]
    got = list(dedup(list(texts)))
    assert got == expected, f"expected {expected}, got {got}: apply prep.clean_text before comparing"


def test_ex1_empty(dedup):
    """drops empty and blank texts; an empty list gives an empty list"""
    assert list(dedup([])) == [], "dedup([]) should be []"
    got = list(dedup(["", "   ", "\n", "x"]))
    assert got == ["x"], f"blank texts must be dropped, got {got}"


def test_ex2_other_batch(make_labels):
    """a 3-row batch with different padding: input ids with -100 on padding"""
    import torch

    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0], [11, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    expected = torch.tensor([[5, 6, 7, 8], [9, 10, -100, -100], [11, -100, -100, -100]])
    labels = make_labels(ids.clone(), mask.clone())
    assert isinstance(labels, torch.Tensor) and torch.equal(labels, expected), (
        f"expected {expected.tolist()}, got {labels.tolist() if hasattr(labels, 'tolist') else labels}"
    )


def test_ex2_unpadded_not_shifted(make_labels):
    """an unpadded row keeps its input ids, not shifted, beside a padded one"""
    import torch

    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    labels = make_labels(ids.clone(), mask.clone())
    assert torch.equal(labels[0], ids[0]), "labels must equal input_ids (the model shifts them itself)"
    assert torch.equal(labels[1], torch.tensor([8, 9, -100, -100, -100])), "padding must be -100"


def test_ex2_mask_not_pad_id(make_labels):
    """masks by attention_mask, not by the pad id (token 0 can be a real token)"""
    import torch

    ids = torch.tensor([[0, 12, 0, 13], [14, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = make_labels(ids.clone(), mask.clone())
    expected = torch.tensor([[0, 12, 0, 13], [14, 0, -100, -100]])
    assert torch.equal(labels, expected), (
        "a real token with id 0 lost its label: use attention_mask == 0, not input_ids == pad id"
    )


def test_ex2_input_untouched(make_labels):
    """does not modify input_ids in place"""
    import torch

    ids = torch.tensor([[21, 22, 23, 0]])
    before = ids.clone()
    labels = make_labels(ids, torch.tensor([[1, 1, 1, 0]]))
    assert torch.equal(ids, before), "input_ids changed: clone them before writing -100"
    assert torch.equal(labels, torch.tensor([[21, 22, 23, -100]])), "padding must be -100"


def test_ex3_other_conversations(assistant_labels):
    """on new conversations only the answer and <|im_end|> carry loss"""
    from course_lib import prep
    from course_lib.assets.tokenizer import CHAT_TEMPLATE
    from course_lib.models import load_tokenizer

    def chat_tokenizer():  # the course LM's tokenizer with the chat template of section 6.2
        tokenizer = load_tokenizer("causal-lm")
        tokenizer.chat_template = CHAT_TEMPLATE
        return tokenizer

    tokenizer = chat_tokenizer()  # decodes the answer; the call gets another one
    rows = [
        {"instruction": "What does `os.getcwd` return?", "input": "", "output": "The current directory."},
        {"instruction": "Which module defines `Path`?", "input": "", "output": "pathlib"},
        {"instruction": "Give two list methods.", "input": "", "output": "append\nextend"},
    ]
    for row in rows:
        messages = prep.sft_messages(row)
        input_ids, labels = assistant_labels(chat_tokenizer(), messages)
        input_ids, labels = [int(t) for t in input_ids], [int(t) for t in labels]
        taught = prep.loss_tokens_text(tokenizer, input_ids, labels)
        answer = row["output"] + "<|im_end|>"
        assert taught in (answer, answer + "\n"), f"loss tokens decode to {taught!r}, expected {answer!r}"


def test_ex3_whole_conversation(assistant_labels):
    """input_ids are the whole conversation and labels have the same length"""
    import copy

    from course_lib import prep
    from course_lib.assets.tokenizer import CHAT_TEMPLATE
    from course_lib.models import load_tokenizer

    def chat_tokenizer():  # the course LM's tokenizer with the chat template of section 6.2
        tokenizer = load_tokenizer("causal-lm")
        tokenizer.chat_template = CHAT_TEMPLATE
        return tokenizer

    tokenizer = chat_tokenizer()
    messages = prep.sft_messages(
        {"instruction": "What are the parameters of `max`?", "output": "(iterable)"}, system=None
    )
    # before the call, with a tokenizer and messages the call never sees (it may change its arguments)
    full = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    input_ids, labels = assistant_labels(chat_tokenizer(), copy.deepcopy(messages))
    assert [int(t) for t in input_ids] == full, "input_ids must be the whole conversation (chat template)"
    assert len(labels) == len(input_ids), "one label per input id"
    assert int(labels[0]) == -100, "the prompt carries no loss"
