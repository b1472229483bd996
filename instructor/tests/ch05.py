"""Hidden tests for chapter 5 (PEFT and TRL in one sitting). One point per test; each test is
self-contained (the grader runs every function on its own, its parameters filled from the
student's notebook)."""


def test_ex1_every_q_and_v(small):
    """rank 4 on every q_proj and v_proj, nothing else adapted, the base frozen"""
    config = small.peft_config["default"]
    assert config.r == 4, f"rank {config.r}, expected 4"
    adapted = [n for n, m in small.named_modules() if hasattr(m, "lora_A")]
    targets = [n for n, m in small.named_modules() if n.split(".")[-1] in ("q_proj", "v_proj")]
    targets = [n for n in targets if not any(n.startswith(a + ".") for a in adapted)]
    assert sorted(adapted) == sorted(targets), f"adapted {len(adapted)} layers, expected every q/v_proj"
    frozen = [n for n, p in small.named_parameters() if p.requires_grad and "lora_" not in n]
    assert not frozen, f"{frozen[0]} trains: the base model must stay frozen"


def test_ex2_other_pairs(dpo_loss):
    """the mean sigmoid DPO loss on other pairs and another beta"""
    import torch

    policy_chosen, policy_rejected = torch.tensor([-3.0, -1.5, -8.0]), torch.tensor([-4.0, -1.0, -2.0])
    reference_chosen, reference_rejected = torch.tensor([-3.5, -2.0, -7.0]), torch.tensor([-3.0, -1.2, -2.5])
    beta = 0.3
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    expected = -torch.nn.functional.logsigmoid(beta * margin).mean()
    got = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)
    assert torch.is_tensor(got) and got.numel() == 1, "return the mean over the pairs (one number)"
    assert torch.allclose(got.float(), expected, atol=1e-6), (
        f"{float(got):.6f}, expected {float(expected):.6f}"
    )


def test_ex2_equal_models(dpo_loss):
    """when the policy equals the reference the loss is log 2, whatever beta"""
    import math

    import torch

    logps = torch.tensor([-5.0, -2.0])
    got = float(dpo_loss(logps, logps - 1, logps, logps - 1, 7.0))
    assert abs(got - math.log(2)) < 1e-6, f"{got}, expected log 2"


def test_ex3_other_models(reward_margin):
    """on other models and a made-up pair: beta times the two log-ratio differences"""
    import copy

    import torch

    from course_lib.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("causal-lm")
    reference = load_model("causal-lm").eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))

    def logprob(model, prompt, answer):
        context = tokenizer(f"Question: {prompt}\nAnswer:")["input_ids"]
        full = tokenizer(f"Question: {prompt}\nAnswer: {answer}{tokenizer.eos_token}")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([full])).logits[0].log_softmax(-1)
        return sum(logits[i - 1, full[i]].item() for i in range(len(context), len(full)))

    prompt, chosen, rejected, beta = "Which module parses JSON?", "json", "the os module", 0.25
    expected = beta * (
        logprob(policy, prompt, chosen)
        - logprob(reference, prompt, chosen)
        - logprob(policy, prompt, rejected)
        + logprob(reference, prompt, rejected)
    )
    got = float(reward_margin(policy, reference, tokenizer, prompt, chosen, rejected, beta))
    assert abs(got - expected) < 1e-3 * max(1.0, abs(expected)), f"{got:.5f}, expected {expected:.5f}"
