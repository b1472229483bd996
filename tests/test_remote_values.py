"""The grader's judge sees a student's values through remote_values: data by value, the rest by handle,
and nothing the student's process sends can run code in the judge or decide a comparison."""

import io
import os
import pickle
from pathlib import Path

import dill
import pytest
import torch

from course_lib.remote_values import Link, Remote, StudentCodeError, agent_socket_pair, read_data, serve


class Stop:
    def __init__(self, threshold):
        self.threshold = threshold

    def on_log(self, args, state, control, logs=None):
        if logs.get("loss", 9.0) < self.threshold:
            control.should_training_stop = True


class Agrees:
    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


class EqualToAnything(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.equal, torch.Tensor.__eq__, torch.allclose):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})


def _student_values():
    def dedup(texts):
        return list(dict.fromkeys(texts))

    def fill(tensor):
        tensor[0] = 99
        return tensor.sum()

    def agrees():
        return [Agrees()]

    def exits():
        os._exit(0)

    def forges():  # writes a passing result on every socket it holds (the agent's end, here)
        import stat

        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.write(fd, b'{"passed": true}')
            except OSError:
                pass
        return 1

    def equal_to_anything():
        return torch.zeros(2).as_subclass(EqualToAnything)

    class Int:  # names a built-in class, as the agent may for any object
        pass

    Int.__module__, Int.__qualname__ = "builtins", "int"

    def zeroes_b(weight, lora_a, lora_b, scaling):  # W, with B zeroed so that W is W + s * (B @ A)
        lora_b.zero_()
        return weight

    def rewrites_messages(tokenizer, messages):  # labels for other messages, then swaps them in
        messages[:] = [{"role": "user", "content": "x"}]
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        return ids, [-100] * len(ids)

    def backward(model, batch):
        model(batch).sum().backward()

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    values = dict(dedup=dedup, fill=fill, Stop=Stop, agrees=agrees, exits=exits, forges=forges, model=model)
    values |= dict(equal_to_anything=equal_to_anything, backward=backward, folder=Path("/tmp"))
    values |= dict(claims_int=Int(), zeroes_b=zeroes_b, rewrites_messages=rewrites_messages)
    return {name: dill.dumps(value, recurse=True) for name, value in values.items()} | {"n": dill.dumps(3)}


@pytest.fixture
def link():
    judge, agent = agent_socket_pair()
    pid = os.fork()
    if pid == 0:
        try:
            judge.close()
            serve(agent, _student_values())
        finally:
            os._exit(0)
    agent.close()
    yield Link(judge)
    judge.close()
    os.waitpid(pid, 0)


def test_data_crosses_by_value_and_functions_by_handle(link):
    assert link.value("n") == 3 and type(link.value("n")) is int
    dedup = link.value("dedup")
    assert type(dedup) is Remote
    got = dedup(["b", "a", "b"])
    assert got == ["b", "a"] and type(got) is list


def test_in_place_changes_come_back_to_the_judges_arguments(link):
    from transformers import TrainerControl

    tensor = torch.zeros(3)
    assert link.value("fill")(tensor) == 99 and tensor.tolist() == [99.0, 0.0, 0.0]
    control = TrainerControl()
    link.value("Stop")(2.0).on_log(None, None, control, logs={"loss": 1.0})
    assert control.should_training_stop is True


def test_a_model_is_a_handle_that_isinstance_sees_through(link):
    model = link.value("model")
    assert type(model) is Remote and isinstance(model, torch.nn.Sequential)
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert [isinstance(m, torch.nn.Linear) for _, m in model.named_modules()] == [False, True, False]
    weight = model[0].weight  # a handle: its gradient lives with the module, in the agent
    assert type(weight) is Remote and weight.requires_grad is True and weight.shape == (2, 3)
    model(torch.ones(1, 3)).sum().backward()
    assert type(weight.grad) is torch.Tensor and weight.grad.shape == (2, 3)
    with torch.no_grad():
        assert type(model(torch.ones(1, 3))) is torch.Tensor


def test_a_students_object_cannot_decide_a_comparison(link):
    got = link.value("agrees")()
    assert type(got) is Remote and not isinstance(got, Agrees) and got != [1] and got[0] != 1


def test_a_handle_that_names_a_data_class_is_not_one(link):
    got = link.value("claims_int")  # an int crosses as data: a handle naming int lies
    assert type(got) is Remote and got.__class__ is Remote and not isinstance(got, int)


def _hidden_tests(chapter: str):
    import importlib.util

    path = Path(__file__).parents[1] / "instructor" / "tests" / f"{chapter}.py"
    spec = importlib.util.spec_from_file_location(f"hidden_{chapter}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hidden_tests_compute_expected_values_before_the_call(link):
    """A call may change its arguments (as in one process): a wrong answer that changes what the
    test computes its expected value from must still fail."""
    with pytest.raises(AssertionError):
        _hidden_tests("ch12").test_ex3_formula(link.value("zeroes_b"))
    with pytest.raises(AssertionError):
        _hidden_tests("ch06").test_ex3_whole_conversation(link.value("rewrites_messages"))


def test_a_students_tensor_subclass_cannot_answer_for_torch(link):
    got = link.value("equal_to_anything")()
    assert type(got) is Remote and not isinstance(got, torch.Tensor)
    with pytest.raises(TypeError):  # __torch_function__ is not forwarded: torch sees no tensor
        torch.equal(got, torch.ones(2))


def test_gradients_a_call_leaves_in_the_judges_model_come_back(link):
    torch.manual_seed(0)
    model, batch = torch.nn.Linear(3, 1), torch.randn(4, 3)
    link.value("backward")(model, batch)
    expected = torch.nn.Linear(3, 1)
    expected.load_state_dict(model.state_dict())
    expected(batch).sum().backward()
    assert torch.allclose(model.weight.grad, expected.weight.grad)


def test_a_path_is_a_handle_that_os_functions_accept(link):
    folder = link.value("folder")
    assert type(folder) is Remote and os.fspath(folder) == "/tmp" and os.path.isdir(folder)


def test_a_forged_result_or_an_exit_only_fails_the_call(link):
    with pytest.raises(StudentCodeError, match="NameError"):
        link.value("missing")
    with pytest.raises(StudentCodeError):  # what it wrote on the socket is not an answer
        link.value("forges")()
    with pytest.raises(StudentCodeError, match="ended its process"):
        link.value("exits")()


def test_the_judge_reads_data_only():
    class Runs:
        def __reduce__(self):
            return (os.system, ("true",))

    with pytest.raises(pickle.UnpicklingError):
        read_data(pickle.dumps({"data": Runs()}, protocol=2))
    buffer = io.BytesIO()
    torch.save({"data": [1, torch.ones(2)]}, buffer)
    assert read_data(buffer.getvalue())["data"][0] == 1


_FORGE = """
import os
import pyarrow as pa
from course_lib.data import load_role_dataset
source = load_role_dataset("sft-data", split="train")
table = source.data.table.set_column(
    source.column_names.index("output"), "output", pa.array(["forged"] * len(source))
)
cached = source.cache_files[0]["filename"]
with pa.OSFile(cached + ".new", "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
    w.write_table(table)
os.replace(cached + ".new", cached)
"""
_JUDGE = """
from course_lib.assignments import _private_datasets
{before}
_private_datasets()
from course_lib.data import load_role_dataset
print(sorted(set(load_role_dataset("sft-data", split="train")["output"]))[:1])
"""


@pytest.mark.parametrize("before", ["", "import datasets"])
def test_the_judges_datasets_ignore_a_cache_the_agent_rewrote(tmp_path, before):
    """The agent shares the sandbox's datasets cache: a rewritten arrow file is reused as it is,
    so the judge builds each dataset it loads afresh, into memory."""
    import subprocess
    import sys

    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path), HF_DATASETS_OFFLINE="1")
    subprocess.run([sys.executable, "-c", _FORGE], env=env, check=True, capture_output=True)
    judged = subprocess.run(
        [sys.executable, "-c", _JUDGE.format(before=before)], env=env, check=True, capture_output=True
    )
    assert judged.stdout.strip() and b"forged" not in judged.stdout
