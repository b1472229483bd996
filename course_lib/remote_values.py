"""The hidden tests' view of a student's values (the instructor kit's grader; no chapter uses it).

Each hidden test runs in two processes of the grading sandbox (``assignments._runner``):

* an **agent** loads the values the student's cells saved and runs the student's code on request;
* a **judge** runs the test's own code and assertions. It never runs anything the student wrote
  and never unpickles what the student's process sends: replies are read with
  ``torch.load(weights_only=True)``, PyTorch's restricted unpickler (tensors, numbers, strings,
  containers, and numpy arrays and scalars, which are allowed below).

A value that is data crosses by value. Anything else (a function, a model, a tokenizer, a
parameter, a tensor that is part of an autograd graph, so that ``loss.backward()`` runs where the
graph is) stays in the agent and the judge gets a ``Remote`` handle, which forwards calls, attribute and item access,
iteration, ``len``, ``bool``, ``str``, ``float``, ``int`` and ``os.fspath``, each answered with data or another
handle. It never forwards ``==``, ordering or hashing: a student's object cannot decide the test's
comparisons. ``isinstance`` sees the class the agent names when that class comes from a library the
tests use (``TRUSTED``) and is not a data type (a handle is never an ``int``, a ``str`` or a ``list``).
The name is the agent's claim: a student's class can call itself ``transformers.GPT2Model``, so a
test must not grade on ``isinstance`` or ``__class__`` of a handle alone.

The judge's own objects go to the agent by value (the agent may read anything the judge sends);
what the student's code did to them in place (a tensor, a list, a dict, a plain object's fields,
as when a callback sets ``control.should_training_stop``) comes back as data and is applied to the
judge's copy. Nothing the agent sends can run code in the judge; what it can do is answer with
wrong data, which fails only its own test, or stop answering, which the runner's time limit ends.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import socket
import struct

TRUSTED = {
    "builtins", "collections", "torch", "numpy", "transformers", "peft", "trl", "datasets",
    "huggingface_hub", "tokenizers", "accelerate",
}  # fmt: skip
MAX_MESSAGE = 1 << 31
_MODULE_STATE = "module state"  # the key of a module's parameters and buffers sent back after a call
_LENGTH = struct.Struct("!Q")
_ERRORS = {
    error.__name__: error
    for error in (AttributeError, KeyError, IndexError, TypeError, ValueError, ZeroDivisionError)
}


_FORWARDED_DUNDERS = {"__name__", "__qualname__", "__module__", "__doc__"}


class StudentCodeError(Exception):
    """The student's code raised (or ended its process) while a test called it."""


# -- the wire ---------------------------------------------------------------------------------


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _receive(sock: socket.socket) -> bytes | None:
    """One message, or None when the other side closed (or sent something impossible)."""
    header = _exactly(sock, _LENGTH.size)
    if header is None:
        return None
    (size,) = _LENGTH.unpack(header)
    return _exactly(sock, size) if size <= MAX_MESSAGE else None


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


@functools.cache
def _safe_globals() -> tuple:
    """numpy's array and scalar reconstruction, as PyTorch's documentation allows for numpy data."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return (core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype) + tuple(
        type(np.dtype(code)) for code in "?bhilqBHILQefdgFDGSUV"
    )


def read_data(payload: bytes):
    """What the agent sent, read as data only (the judge's side)."""
    import torch

    with torch.serialization.safe_globals(list(_safe_globals())):
        return torch.load(io.BytesIO(payload), weights_only=True)


def _is_data(value, depth: int = 0) -> bool:
    """True for what ``read_data`` accepts: exact built-in scalars and containers, plain tensors,
    numpy arrays and scalars of non-object dtypes (the agent's side: it decides value or handle)."""
    import numpy as np
    import torch

    kind = type(value)
    if depth > 50:
        return False
    if value is None or kind in (bool, int, float, complex, str, bytes, torch.dtype, torch.device):
        return True
    if kind in (list, tuple, set, torch.Size):
        return all(_is_data(item, depth + 1) for item in value)
    if kind is dict:
        return all(_is_data(k, depth + 1) and _is_data(v, depth + 1) for k, v in value.items())
    if kind is torch.Tensor:  # a Parameter stays a handle: its .grad lives in the agent's module
        return value.grad_fn is None and value.layout == torch.strided and value.device.type != "meta"
    if kind is np.ndarray or isinstance(value, np.generic):
        return value.dtype != object and type(value).__module__ == "numpy"
    return False


def _data_bytes(value) -> bytes | None:
    """``value`` saved for ``read_data``, or None when it is not data."""
    import torch

    if not _is_data(value):
        return None
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
    except Exception:  # noqa: BLE001 - an exotic tensor: send a handle instead
        return None
    return buffer.getvalue()


# -- the judge's side ---------------------------------------------------------------------------


class Link:
    """The judge's end of the socket to one agent."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def ask(self, *request):
        """Send ``request``; return the agent's answer as data or a ``Remote``."""
        import dill
        import torch

        # the judge's grad mode: under its torch.no_grad() the student's model builds no graph
        _send(self.sock, dill.dumps((torch.is_grad_enabled(), request), recurse=True))
        reply = self._reply()
        if "error" in reply:
            name, message = (str(part) for part in reply["error"])
            if name in _ERRORS:  # as the test expects them: hasattr() needs AttributeError, and so on
                raise _ERRORS[name](message)
            raise StudentCodeError(f"{name}: {message}")
        if reply.get("stop"):
            raise StopIteration
        for where, state in reply.get("after", []):
            _apply(request, where, state)
        if "ref" in reply:
            return Remote(self, reply["ref"])
        return read_data(reply["data"])

    def _reply(self) -> dict:
        payload = _receive(self.sock)
        if payload is None:
            raise StudentCodeError(
                "your code ended its process (os._exit, a crash or a kill) during the test"
            )
        try:
            reply = read_data(payload)
        except Exception as error:  # noqa: BLE001 - not data: the agent is not ours to trust
            raise StudentCodeError(f"the answer could not be read as data ({type(error).__name__})") from None
        ok = isinstance(reply, dict) and (
            ("ref" in reply and type(reply["ref"]) is int)
            or type(reply.get("data")) is bytes
            or reply.get("stop") is True
            or (type(reply.get("error")) in (list, tuple) and len(reply["error"]) == 2)
        )
        if not ok or not all(isinstance(e, tuple) and len(e) == 2 for e in reply.get("after", [])):
            raise StudentCodeError("the student's process sent a malformed answer")
        return reply

    def value(self, name: str):
        """The student's value called ``name``."""
        return self.ask("value", name)


def _apply(request: tuple, where, state) -> None:
    """Apply what the student's code did to one of the judge's arguments to the judge's copy."""
    import torch

    try:
        args, kwargs = request[2], request[3]
        target = args[where] if type(where) is int else kwargs[where]
        new = read_data(state)
        if isinstance(target, torch.Tensor) and isinstance(new, torch.Tensor):
            with torch.no_grad():
                if target.shape == new.shape and target.dtype == new.dtype:
                    target.copy_(new)
                else:
                    target.set_(new.to(target.dtype) if new.dtype != target.dtype else new)
        elif isinstance(target, torch.nn.Module) and type(new) is dict and _MODULE_STATE in new:
            parameters, buffers = new[_MODULE_STATE]
            with torch.no_grad():
                for name, p in target.named_parameters():
                    data, grad, requires_grad = parameters[name]
                    p.copy_(data)
                    p.grad = None if grad is None else grad.to(p.dtype).clone()
                    p.requires_grad_(requires_grad is True)
                for name, b in target.named_buffers():
                    b.copy_(buffers[name])
        elif type(target) is list and type(new) is list:
            target[:] = new
        elif type(target) is dict and type(new) is dict:
            target.clear()
            target.update(new)
        elif type(new) is dict and hasattr(target, "__dict__"):
            for key, field in new.items():
                if type(key) is str:
                    setattr(target, key, field)
    except Exception:  # noqa: BLE001 - a state the judge's copy cannot take: leave it as it was
        pass


def _trusted_class(module: str, qualname: str):
    if module.split(".")[0] not in TRUSTED or "<" in qualname:
        return None
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(found, type) or issubclass(found, _SCALARS) or found in _CONTAINERS:
        return None
    return found


# The agent names the class, so a student's class can claim to be `builtins.int`. These cross as
# data, never as handles (a library's str or int enum is too rare in a test's answer to matter):
# a handle that names one lies, and `isinstance(answer, int)` must not believe it. A library's
# dict or list subclass (OrderedDict, DatasetDict) is a handle and keeps its class.
_SCALARS = (int, float, complex, str, bytes)
_CONTAINERS = (list, tuple, set, frozenset, dict, type(None))


class Remote:
    """A handle to a value that lives in the agent (see the module's docstring)."""

    __slots__ = ("_link", "_ref")

    def __init__(self, link: Link, ref: int):
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_ref", ref)

    def _ask(self, operation: str, *arguments):
        return object.__getattribute__(self, "_link").ask(
            operation, object.__getattribute__(self, "_ref"), *arguments
        )

    @property
    def __class__(self):
        names = self._ask("class")
        if type(names) is tuple and len(names) == 2 and all(type(n) is str for n in names):
            return _trusted_class(*names) or Remote
        return Remote

    def __getattr__(self, name: str):
        # Protocols look their hooks up by name (``__torch_function__``, ``__array_ufunc__``,
        # ``__eq__``): forwarding one would let the student's object decide what the judge computes.
        if name.startswith("__") and name.endswith("__") and name not in _FORWARDED_DUNDERS:
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value) -> None:
        self._ask("setattr", name, value)

    def __call__(self, *args, **kwargs):
        return self._ask("call", args, kwargs)

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __setitem__(self, key, value) -> None:
        self._ask("setitem", key, value)

    def __iter__(self):
        iterator = self._ask("iter")
        return iterator if type(iterator) is Remote else iter(iterator)

    def __next__(self):
        return self._ask("next")

    def __len__(self) -> int:
        return _typed(self._ask("len"), int)

    def __bool__(self) -> bool:
        return _typed(self._ask("bool"), bool)

    def __contains__(self, item) -> bool:
        return _typed(self._ask("contains", item), bool)

    def __float__(self) -> float:
        return _typed(self._ask("float"), float)

    def __int__(self) -> int:
        return _typed(self._ask("int"), int)

    def __fspath__(self) -> str:
        return _typed(self._ask("fspath"), str)

    def __str__(self) -> str:
        return _typed(self._ask("str"), str)

    def __repr__(self) -> str:
        return _typed(self._ask("repr"), str)

    def __reduce_ex__(self, protocol):
        return (Handle, (object.__getattribute__(self, "_ref"),))


def _typed(value, kind: type):
    if type(value) is not kind:
        raise TypeError(f"the student's object answered with {type(value).__name__}, not {kind.__name__}")
    return value


class Handle:
    """What a ``Remote`` becomes when the judge sends it back: the agent's object number."""

    def __init__(self, ref: int):
        self.ref = ref


# -- the agent's side ---------------------------------------------------------------------------


def serve(sock: socket.socket, values: dict[str, bytes]) -> None:
    """Answer the judge's requests until it closes the socket (in the agent process). ``values``
    maps each name the tests may read to its dill bytes, loaded only when a test asks for it."""
    import dill
    import torch

    objects: list = []

    def resolve(value):
        if type(value) is Handle:
            return objects[value.ref]
        if type(value) in (list, tuple):
            return type(value)(resolve(v) for v in value)
        if type(value) is dict:
            return {k: resolve(v) for k, v in value.items()}
        return value

    def answer(value) -> dict:
        data = _data_bytes(value)
        if data is not None:
            return {"data": data}
        objects.append(value)
        return {"ref": len(objects) - 1}

    while True:
        payload = _receive(sock)
        if payload is None:
            return
        grad_enabled, request = dill.loads(payload)
        operation = request[0]
        reply = {}
        try:
            torch.set_grad_enabled(grad_enabled is True)
            if operation == "value":
                name = request[1]
                if name not in values:
                    raise NameError(f"`{name}` is not defined when your cells have run")
                reply = answer(dill.loads(values[name]))
            else:
                target, arguments = objects[request[1]], resolve(list(request[2:]))
                reply = _operate(target, operation, arguments, answer)
        except StopIteration:
            reply = {"stop": True}
        except BaseException as error:  # noqa: BLE001 - the student's code may raise anything
            reply = {"error": (type(error).__name__, str(error)[:300])}
        try:
            encoded = _data_bytes(reply)
        except BaseException:  # noqa: BLE001
            encoded = None
        if encoded is None:
            encoded = _data_bytes({"error": ("TypeError", "the answer could not be sent as data")})
        _send(sock, encoded)


def _operate(target, operation: str, arguments: list, answer) -> dict:
    if operation == "call":
        args, kwargs = arguments
        result = answer(target(*args, **kwargs))
        after = [(i, _data_bytes(_state(a))) for i, a in enumerate(args)]
        after += [(k, _data_bytes(_state(a))) for k, a in kwargs.items()]
        result["after"] = [(where, state) for where, state in after if state is not None]
        return result
    if operation == "class":
        kind = type(target)
        return answer((str(kind.__module__), str(kind.__qualname__)))
    simple = {
        "getattr": lambda: getattr(target, *arguments),
        "setattr": lambda: setattr(target, *arguments),
        "getitem": lambda: target[arguments[0]],
        "setitem": lambda: target.__setitem__(*arguments),
        "iter": lambda: iter(target),
        "next": lambda: next(target),
        "len": lambda: len(target),
        "bool": lambda: bool(target),
        "contains": lambda: arguments[0] in target,
        "float": lambda: float(target),
        "int": lambda: int(target),
        "fspath": lambda: str(os.fspath(target)),
        "str": lambda: str(target),
        "repr": lambda: repr(target),
    }
    return answer(simple[operation]())


def _state(argument):
    """What a call may have changed in a judge's argument: the value itself, a module's parameters
    (with their gradients) and buffers, or a plain object's fields (None when none is data)."""
    import torch

    if _is_data(argument):
        return argument
    if isinstance(argument, torch.nn.Module):
        parameters = {
            name: [p.detach(), None if p.grad is None else p.grad.detach(), p.requires_grad]
            for name, p in argument.named_parameters()
        }
        buffers = {name: b.detach() for name, b in argument.named_buffers()}
        return {_MODULE_STATE: [parameters, buffers]}
    fields = getattr(argument, "__dict__", None)
    return dict(fields) if type(fields) is dict and _is_data(fields) else None


def agent_socket_pair() -> tuple[socket.socket, socket.socket]:
    """``(judge's end, agent's end)``, neither inherited by a later exec."""
    judge, agent = socket.socketpair()
    for end in (judge, agent):
        os.set_inheritable(end.fileno(), False)
    return judge, agent
