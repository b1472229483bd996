"""Hidden tests for chapter 11 (a training loop in plain PyTorch). One point per test; each test
is self-contained (the grader runs every function on its own, its parameters filled from the
student's notebook)."""


def test_ex1_value(answer):
    """4 sequences x 8 accumulation steps x 64 tokens: 2,048 tokens an optimizer step"""
    assert isinstance(answer, int) and not isinstance(answer, bool), "answer should be an int"
    assert answer == 2048, f"{answer}: batch_size x accumulation x block size"


def test_ex2_schedule(factor):
    """LambdaLR with it: 1/5, 2/5, ... 1 over the first steps, then constant"""
    import torch

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1, 0.2, 0.3, 0.4, 0.5] + [0.5] * 7
    assert all(abs(r - e) < 1e-9 for r, e in zip(rates, expected)), (
        f"learning rates {[round(r, 3) for r in rates]}, expected {expected}: the first step must train"
    )


def test_ex3_other_model(accumulate):
    """on another small model, 6 rows in 3 micro-batches: the whole batch's gradient"""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from course_lib.exercises import accumulation_matches

    torch.manual_seed(2)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config)
    batch = torch.randint(0, 40, (6, 7))
    assert accumulation_matches(accumulate, model, batch, 3), (
        "the accumulated gradients differ from one backward pass on the whole batch"
    )
