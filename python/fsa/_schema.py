"""The ops' arguments, read from their registered schemas: the one declaration is the C++ op table
(python/csrc/op_table.hpp) and its lists of fields (python/csrc/fields.hpp).

An op's scalar arguments are named after where their values come from: an NsaConfig attribute,
nested configs flattened with '_' (`config.rope.theta` -> `rope_theta`), or a run option that the
Python API takes as a keyword of the same name (`path`, `deterministic`, ...). `op_args` fills them
from a config and the options, so no Python code lists them; `bind` names the arguments of a call
for the fake implementations.
"""
import dataclasses
from types import SimpleNamespace
from typing import Dict, NamedTuple, Tuple

import torch

from ._library import ops


def op_names() -> Tuple[str, ...]:
    """Every op of the fsa library, as registered by the C++ op table."""
    return tuple(_SIGNATURES)


class Argument(NamedTuple):
    name: str
    is_tensor: bool  # Tensor or Tensor?
    default: object  # None when the schema gives none


def _registered_op_names():
    getter = getattr(torch._C, "_dispatch_get_all_op_names", None)
    names = getter() if getter is not None else [s.name for s in torch._C._jit_get_all_schemas()]
    return sorted({n.split("::", 1)[1].split(".", 1)[0] for n in names if n.startswith("fsa::")})


def _signature(name):
    def is_tensor(t):
        if isinstance(t, torch.OptionalType):
            t = t.getElementType()
        return isinstance(t, torch.TensorType)

    return tuple(Argument(a.name, is_tensor(a.type), a.default_value)
                 for a in getattr(ops, name).default._schema.arguments)


# Read once at import, as plain Python values: torch.compile traces the functions below (through
# the functional API) and cannot trace the schema objects.
_SIGNATURES = {name: _signature(name) for name in _registered_op_names()}


def arguments(name: str) -> Tuple[Argument, ...]:
    """The schema arguments of op `name`."""
    return _SIGNATURES[name]


def tensor_count(name: str) -> int:
    """Number of leading tensor arguments of op `name`."""
    count = 0
    for argument in arguments(name):
        if not argument.is_tensor:
            break
        count += 1
    return count


def scalar_names(name: str) -> Tuple[str, ...]:
    """Names of the arguments of op `name` after its leading tensors."""
    return tuple(a.name for a in arguments(name)[tensor_count(name):])


def has_tensors(name: str) -> bool:
    return any(a.is_tensor for a in arguments(name))


def config_fields(config, prefix: str = "") -> Dict[str, object]:
    """{argument name: value} of every field of a config dataclass, nested ones flattened."""
    fields = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            fields.update(config_fields(value, f"{prefix}{field.name}_"))
        else:
            fields[f"{prefix}{field.name}"] = value
    return fields


def op_args(name: str, *leading, config, **options) -> tuple:
    """The arguments of op `name`: `leading` (its first arguments, as given), then every later
    argument from `options` by name, else from `config` (config_fields). An argument found in
    neither, or an option the op does not take, is a TypeError: the C++ and Python sides drifted.
    """
    fields = config_fields(config)
    values = list(leading)
    unused = dict(options)
    for argument in arguments(name)[len(leading):]:
        if argument.name in unused:
            values.append(unused.pop(argument.name))
        elif argument.name in fields:
            values.append(fields[argument.name])
        else:
            raise TypeError(f"fsa::{name}: argument '{argument.name}' is neither a field of "
                            f"{type(config).__name__} nor an option given to it")
    if unused:
        raise TypeError(f"fsa::{name}: takes no argument {', '.join(repr(k) for k in unused)}")
    return tuple(values)


def call(name: str, *leading, config, **options):
    """Runs op `name` on op_args(name, *leading, config=config, **options)."""
    return getattr(ops, name)(*op_args(name, *leading, config=config, **options))


def bind(name: str, args, kwargs) -> SimpleNamespace:
    """The arguments of a call of op `name` by schema name, defaults filled in."""
    values = {}
    for i, argument in enumerate(arguments(name)):
        if i < len(args):
            values[argument.name] = args[i]
        elif argument.name in kwargs:
            values[argument.name] = kwargs[argument.name]
        else:
            values[argument.name] = argument.default
    return SimpleNamespace(**values)
