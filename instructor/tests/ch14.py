"""Hidden tests for chapter 14 (scaling out). One point per test; each test is self-contained (the
grader runs every function on its own, its parameters filled from the student's notebook)."""


def test_ex1_value(answer):
    """4 GPUs x 8 per device x 4 accumulation steps: 128 examples a step, an integer"""
    assert isinstance(answer, int) and not isinstance(answer, bool), "answer should be an int"
    assert answer == 128, f"{answer} examples; per-device batch x processes x accumulation steps"


def test_ex2_qlora(qlora):
    """TRL parses it: use_peft, load_in_4bit, lora_r 16, data/signature, 30 steps"""
    import tempfile
    from pathlib import Path

    import yaml
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

    text = qlora if isinstance(qlora, str) else yaml.safe_dump(qlora)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "c.yaml").write_text(text)
        parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
        script, training, model, _ = parser.parse_args_and_config(["--config", str(Path(folder) / "c.yaml")])
    assert model.use_peft and model.load_in_4bit, "QLoRA: use_peft and load_in_4bit"
    assert model.lora_r == 16 and training.max_steps == 30, "lora_r 16, max_steps 30"
    assert str(script.dataset_name).rstrip("/") == "data/signature", "dataset_name: data/signature"


def test_ex3_other_sizes(zero_gb):
    """other parameter counts and GPU numbers at every stage"""
    for parameters, gpus in ((3e9, 8), (1.5e9, 2)):
        expected = {
            0: 16 * parameters / 1e9,
            1: (4 + 12 / gpus) * parameters / 1e9,
            2: (2 + 14 / gpus) * parameters / 1e9,
            3: 16 / gpus * parameters / 1e9,
        }
        for stage, gb in expected.items():
            got = float(zero_gb(parameters, gpus, stage))
            assert abs(got - gb) < 1e-6 * gb, (
                f"{parameters:.0e} params, {gpus} GPUs, stage {stage}: {got} != {gb}"
            )
