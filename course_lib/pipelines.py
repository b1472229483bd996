"""A custom ``Pipeline``: the model's most likely next tokens, with probabilities.

It shows the three steps every pipeline has (``preprocess`` -> ``_forward`` ->
``postprocess``) and how ``PIPELINE_REGISTRY`` makes a new task name work with
``transformers.pipeline("next-token", model=...)``.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

TASK = "next-token"


class NextTokenPipeline(Pipeline):
    """``pipe("def main(")`` -> ``[{"token": "self", "probability": 0.21}, ...]``."""

    def _sanitize_parameters(self, top_k: int | None = None, **kwargs):
        postprocess = {}
        if top_k is not None:
            if top_k < 1:
                raise ValueError(f"top_k must be >= 1, got {top_k}.")
            postprocess["top_k"] = top_k
        return {}, {}, postprocess

    def preprocess(self, text: str):
        if not isinstance(text, str) or not text:
            raise ValueError("NextTokenPipeline needs a non-empty string prompt.")
        return self.tokenizer(text, return_tensors="pt")

    def _forward(self, model_inputs):
        logits = self.model(**model_inputs).logits
        return {"logits": logits[0, -1]}

    def postprocess(self, model_outputs, top_k: int = 5):
        probs = torch.softmax(model_outputs["logits"].float(), dim=-1)
        values, indices = probs.topk(top_k)
        return [{"token": self.tokenizer.decode([int(i)]), "token_id": int(i),
                 "probability": round(float(v), 4)} for v, i in zip(values, indices)]


def register() -> None:
    """Make ``pipeline("next-token", ...)`` available (idempotent)."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=NextTokenPipeline,
                                            pt_model=AutoModelForCausalLM, type="text")


def embed_texts(extractor, texts: list[str]) -> torch.Tensor:
    """Sentence embeddings from a ``feature-extraction`` pipeline: mean over tokens, unit length.

    Mean pooling is how MiniLM-style sentence encoders were trained; the pipeline
    itself returns one vector per token.
    """
    if not texts:
        raise ValueError("embed_texts needs at least one text.")
    vectors = [torch.tensor(extractor(text)[0]).mean(dim=0) for text in texts]
    return torch.nn.functional.normalize(torch.stack(vectors), dim=-1)
