import ast
import copy
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from course_lib import prep
from course_lib.assets.tokenizer import CHAT_TEMPLATE
from course_lib.prep import IGNORE_INDEX
from course_lib.profiles import CourseError

ROWS = [
    {"id": str(i), "text": f"Document number {i}.\n\nIt has a second paragraph about item {i}. " * 3}
    for i in range(40)
]
SFT_ROW = {
    "instruction": "Which standard-library module defines the function `dumps`?",
    "input": "",
    "output": "json",
}


def test_clean_text_normalises_and_is_idempotent():
    raw = "  Caf\u0065\u0301 menu\r\nline two  \n\n\n\nthird\x00 line\x0c\n"
    cleaned = prep.clean_text(raw)
    assert cleaned == "Caf\u00e9 menu\nline two\n\nthird line"
    assert prep.clean_text(cleaned) == cleaned
    assert prep.clean_text(" \t\n ") == ""


def test_clean_corpus_counts_every_step():
    rows = ROWS[:3] + [
        ROWS[0],
        {"id": "x", "text": "  \n"},
        {"id": "y", "text": "too short"},
        ROWS[1] | {"text": ROWS[1]["text"].replace("\n", "\r\n")},
    ]
    kept, steps = prep.clean_corpus(rows, min_chars=50)
    assert [s["documents"] for s in steps] == [7, 6, 4, 3]
    assert [s["removed"] for s in steps] == [0, 1, 2, 1]
    assert [r["id"] for r in kept] == ["0", "1", "2"]  # first copy kept
    assert steps[-1]["characters"] == sum(len(r["text"]) for r in kept)


def test_clean_corpus_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_chars"):
        prep.clean_corpus(ROWS, min_chars=10, max_chars=5)
    with pytest.raises(CourseError, match="text_column"):
        prep.clean_corpus([{"content": "hello"}])


def test_cleaning_a_simulated_crawl_gives_back_the_clean_corpus():
    crawl, injected = prep.simulate_crawl(ROWS, seed=1)
    assert len(crawl) == len(ROWS) + sum(v for k, v in injected.items() if "in place" not in k)
    assert any(
        "\x00" in r["text"] or "\x0c" in r["text"] or "\x1b" in r["text"] or "\x7f" in r["text"]
        for r in crawl
    )
    kept_crawl, steps = prep.clean_corpus(crawl)
    kept_clean, _ = prep.clean_corpus(ROWS)
    assert sorted(r["text"] for r in kept_crawl) == sorted(r["text"] for r in kept_clean)
    assert steps[2]["removed"] == injected["exact copies"] + injected["whitespace variants"]
    assert steps[1]["removed"] == injected["empty rows"]
    assert steps[3]["removed"] == injected["boilerplate lines"]


def test_sft_messages():
    messages = prep.sft_messages(SFT_ROW | {"input": "def dumps(obj): ..."})
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"].endswith("\n\ndef dumps(obj): ...")
    assert prep.sft_messages(SFT_ROW, system=None)[0]["role"] == "user"
    with pytest.raises(CourseError, match="instruction"):
        prep.sft_messages({"output": "x"})


def test_group_texts_packs_and_drops_only_the_tail():
    blocks = prep.group_texts([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert blocks == [[1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(ValueError, match="block_size"):
        prep.group_texts([[1]], 0)


def test_tokenize_and_pack_separates_documents_with_eos(course_lm):
    _, tokenizer = course_lm
    texts = [r["text"] for r in ROWS[:5]]
    packed = prep.tokenize_and_pack(Dataset.from_dict({"text": texts, "id": list("abcde")}), tokenizer, 16)
    assert packed.column_names == ["input_ids"]
    stream = [
        t
        for text in texts
        for t in tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ]
    assert len(packed) == len(stream) // 16
    assert [t for block in packed["input_ids"] for t in block] == stream[: len(packed) * 16]


def test_padding_cost_by_hand():
    rows = {r["layout"]: r for r in prep.padding_cost([2, 4, 10], block_size=4)}
    assert rows["one document per row"]["padding %"] == round(100 * 2 / 12, 1)
    assert rows["one document per row"]["tokens lost %"] == 37.5  # 6 of 16 tokens beyond the block
    assert rows["packed blocks"]["rows"] == 4 and rows["packed blocks"]["tokens lost %"] == 0.0


def test_causal_lm_labels_give_the_models_own_loss(course_lm):
    model, tokenizer = course_lm
    ids = tokenizer(["Return the number of items in the dictionary. " * 4], return_tensors="pt")["input_ids"]
    labels = prep.causal_lm_labels(ids)
    assert torch.equal(labels, ids)  # not shifted
    with torch.no_grad():
        out = model(input_ids=ids.to(model.device), labels=labels.to(model.device))
    # the model's internal shift, written out token by token
    log_probs = out.logits[0].log_softmax(-1)
    by_hand = -torch.stack([log_probs[t, ids[0, t + 1]] for t in range(ids.shape[1] - 1)]).mean()
    assert torch.allclose(out.loss, by_hand, atol=1e-5)


def test_padding_positions_are_ignored_in_labels():
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    assert prep.causal_lm_labels(ids, mask).tolist() == [[5, 6, 7, IGNORE_INDEX, IGNORE_INDEX]]


def test_assistant_only_labels_decode_to_the_answer(course_lm):
    _, tokenizer = course_lm
    encoded = prep.tokenize_chat(tokenizer, prep.sft_messages(SFT_ROW))
    assert len(encoded["input_ids"]) == len(encoded["labels"]) == len(encoded["attention_mask"])
    assert prep.loss_tokens_text(tokenizer, encoded["input_ids"], encoded["labels"]) == "json<|im_end|>"
    truncated = prep.tokenize_chat(tokenizer, prep.sft_messages(SFT_ROW), max_length=5)
    assert len(truncated["input_ids"]) == 5
    with pytest.raises(CourseError, match="assistant"):
        prep.tokenize_chat(tokenizer, [{"role": "user", "content": "hi"}])


def test_a_tokenizer_without_chat_template_is_an_error_not_a_fallback(course_lm):
    """A base model ships no template (SmolLM2-135M): tokenize_chat says how to give it one."""
    _, tokenizer = course_lm
    base = copy.deepcopy(tokenizer)
    base.chat_template = None
    with pytest.raises(CourseError, match="no chat template.*clone_chat_template"):
        prep.tokenize_chat(base, prep.sft_messages(SFT_ROW))


def test_templates_without_generation_markers_fall_back_to_the_prompt_prefix(course_lm):
    _, tokenizer = course_lm
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    messages = prep.sft_messages(SFT_ROW)
    marked, fallback = prep.tokenize_chat(tokenizer, messages), prep.tokenize_chat(plain, messages)
    assert fallback["input_ids"] == marked["input_ids"]
    first = [label != IGNORE_INDEX for label in marked["labels"]].index(True)
    assert [label != IGNORE_INDEX for label in fallback["labels"]].index(True) == first
    assert prep.loss_tokens_text(plain, fallback["input_ids"], fallback["labels"]) == "json<|im_end|>\n"
    with pytest.raises(CourseError, match="generation"):
        prep.tokenize_chat(plain, messages + [{"role": "user", "content": "and loads?"}])


def test_padded_features_carry_no_loss(course_lm):
    model, tokenizer = course_lm
    features = [
        prep.tokenize_chat(tokenizer, prep.sft_messages(SFT_ROW | {"output": answer}))
        for answer in ("json", "the json module, which also defines loads", "pickle")
    ]
    batch = prep.pad_features(features, tokenizer.pad_token_id)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    with torch.no_grad():
        batch_loss = model(**batch).loss
        total, count = 0.0, 0
        for feature in features:  # each example alone, no padding at all
            ids, labels = torch.tensor([feature["input_ids"]]), torch.tensor([feature["labels"]])
            n = int((labels[0, 1:] != IGNORE_INDEX).sum())
            total += model(input_ids=ids, labels=labels).loss.item() * n
            count += n
        naive = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"]
        ).loss
    assert abs(batch_loss.item() - total / count) < 1e-4
    assert abs(naive.item() - batch_loss.item()) > 0.1


def test_pad_features_labels_examples_without_labels():
    batch = prep.pad_features([{"input_ids": [1, 2, 3]}, {"input_ids": [4]}], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="at least one"):
        prep.pad_features([], pad_token_id=0)


def test_ch06_checks(course_lm):
    from course_lib.exercises import ch06

    def dedup(texts):
        return [t for t in dict.fromkeys(prep.clean_text(t) for t in texts) if t]

    assert ch06.check_dedup(dedup).passed
    raw = ch06.check_dedup(lambda texts: list(dict.fromkeys(texts)))
    assert not raw.passed and "clean_text" in raw.message

    assert ch06.check_labels(prep.causal_lm_labels).passed

    def hand_shifted(ids, mask):  # the classic mistake: labels[t] = input_ids[t + 1]
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, :-1] = ids[:, 1:]
        return labels

    shifted = ch06.check_labels(hand_shifted)
    assert not shifted.passed and "shifted" in shifted.message
    unmasked = ch06.check_labels(lambda ids, mask: ids.clone())
    assert not unmasked.passed and "-100" in unmasked.message

    _, tokenizer = course_lm

    def by_prefix(tokenizer, messages):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        return ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt) :]

    assert ch06.check_assistant_labels(by_prefix, tokenizer).passed
    everything = ch06.check_assistant_labels(
        lambda tok, m: (by_prefix(tok, m)[0], by_prefix(tok, m)[0]), tokenizer
    )
    assert not everything.passed and "add_generation_prompt" in everything.message


def test_label_alignment_and_loss_reports(course_lm):
    model, tokenizer = course_lm
    ids = tokenizer("Return the number of items in the dictionary.")["input_ids"]
    rows = prep.label_alignment(tokenizer, torch.tensor(ids), positions=3)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [r["target, labels = ids"] for r in rows] == tokens[1:4]
    assert [r["target, hand-shifted"] for r in rows] == tokens[2:5]
    with pytest.raises(ValueError, match="tokens"):
        prep.label_alignment(tokenizer, torch.tensor(ids[:3]))

    report = prep.assistant_loss_report(tokenizer, [SFT_ROW, SFT_ROW | {"output": "pickle"}])
    assert report["conversations"] == 2 and report["loss text starts with the answer"] == 2
    assert report["what follows the answer"] == "'<|im_end|>' (2)"
    assert 0 < report["tokens with loss"] < report["tokens"]

    features = [prep.tokenize_chat(tokenizer, prep.sft_messages(SFT_ROW))]
    with torch.no_grad():
        alone = model(
            input_ids=torch.tensor([features[0]["input_ids"]]), labels=torch.tensor([features[0]["labels"]])
        ).loss.item()
    assert abs(prep.token_weighted_loss(model, features) - alone) < 1e-6
    with pytest.raises(ValueError, match="carries loss"):
        prep.token_weighted_loss(model, [{"input_ids": [5], "labels": [5]}])


def test_ch06_writes_out_the_course_chat_template():
    """Section 6.2 sets on the page the template the course tokenizer was saved with (its prose says
    so), and the hidden tests of exercise 3 set CHAT_TEMPLATE: the two strings must stay one."""
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "06_data_preparation.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    written = [
        ast.literal_eval(statement.value)
        for cell in cells
        if cell["cell_type"] == "code"
        for statement in ast.parse("".join(cell["source"])).body
        if isinstance(statement, ast.Assign)
        and [ast.unparse(t) for t in statement.targets] == ["chat_template"]
    ]
    assert written == [CHAT_TEMPLATE]
