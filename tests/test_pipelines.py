import pytest
import torch
from transformers import pipeline

from course_lib import pipelines
from course_lib.models import source_of
from course_lib.profiles import resolve


def test_registered_next_token_pipeline(course_lm):
    model, tokenizer = course_lm
    pipelines.register()
    pipelines.register()  # idempotent
    pipe = pipeline("next-token", model=model, tokenizer=tokenizer)
    assert isinstance(pipe, pipelines.NextTokenPipeline)
    rows = pipe("Return the", top_k=4)
    probs = [r["probability"] for r in rows]
    assert len(rows) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
    with torch.no_grad():
        logits = model(**tokenizer("Return the", return_tensors="pt")).logits[0, -1]
    assert rows[0]["token_id"] == int(logits.argmax())


def test_bad_inputs_fail_clearly(course_lm):
    model, tokenizer = course_lm
    pipe = pipelines.NextTokenPipeline(model=model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="non-empty"):
        pipe("")
    with pytest.raises(ValueError, match="top_k"):
        pipe("x", top_k=0)


def test_sentence_embeddings_put_paraphrases_closer():
    extractor = pipeline("feature-extraction", model=source_of(resolve("encoder")))
    emb = pipelines.embed_texts(extractor, ["Open a file for reading.", "Read the contents of a file.",
                                            "Sort a list in place."])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2]
    with pytest.raises(ValueError):
        pipelines.embed_texts(extractor, [])
