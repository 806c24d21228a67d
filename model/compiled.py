"""torch.compile of one instance's method, with a code object of its own.

Dynamo keys its cache, its recompile limit (8) and its "this dimension changed, make it
dynamic" memory on the code object. A method shared by every instance (every model's
`StreamingNetwork._forward`, every model's `S4DNetwork.features`) hits the limit when a
process serves several models (the fifth shipped model's streaming step did, measured), and
one model's shapes turn the next one's symbolic. A copy of the code per instance keeps each
instance's guards its own."""

from __future__ import annotations

import types

import torch


def compile_method(obj, name: str, **options):
    """`torch.compile` of `obj.name` (a plain method of its class) on its own code object."""
    plain = getattr(type(obj), name)
    own = types.FunctionType(plain.__code__.replace(), plain.__globals__, plain.__name__,
                             plain.__defaults__, plain.__closure__)
    own.__kwdefaults__ = plain.__kwdefaults__
    return torch.compile(types.MethodType(own, obj), **options)
