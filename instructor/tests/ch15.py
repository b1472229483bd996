"""Hidden tests for chapter 15 (memory and speed). One point per test; each test is
self-contained (the grader runs every function on its own, its parameters filled from the
student's notebook)."""


def test_ex1_values(adamw_gb, adamw8bit_gb):
    """AdamW: 8 bytes a parameter (56 GB for 7B); AdamW8bit: 2 (14 GB)"""
    assert abs(float(adamw_gb) - 56) < 1e-6, f"AdamW: {adamw_gb} GB, expected 56 (two float32 moments)"
    assert abs(float(adamw8bit_gb) - 14) < 1e-6, f"AdamW8bit: {adamw8bit_gb} GB, expected 14"


def test_ex2_plan(max_memory):
    """the 7B plan uses both GPUs within 8 GiB each and nothing else"""
    import torch
    from accelerate import init_empty_weights
    from accelerate.utils import infer_auto_device_map
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )
    with init_empty_weights():
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    plan = infer_auto_device_map(
        model, max_memory=dict(max_memory), no_split_module_classes=["LlamaDecoderLayer"]
    )
    placed = set(plan.values())
    assert placed == {0, 1}, (
        f"the plan places modules on {sorted(map(str, placed))}, expected GPUs 0 and 1 only"
    )
    limits = {k: v for k, v in dict(max_memory).items() if k in (0, 1)}
    assert len(limits) == 2, "give GPUs 0 and 1 a limit"


def test_ex3_uneven_split(accumulate):
    """5 rows in 3 micro-batches on another small Llama: the full batch's gradients"""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from course_lib.exercises import accumulation_matches

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    batch = torch.randint(0, 50, (5, 9))
    assert accumulation_matches(accumulate, model, batch, 3), (
        "the accumulated gradients differ from one backward pass on the whole batch"
    )
