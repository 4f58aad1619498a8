"""Launch a Triton kernel's compiled binary directly once Triton has built it, without binding every argument again.

`kernel[grid](*args)` binds and specializes all of a kernel's arguments on every call: for the decode kernel's 56 that
is most of a launch's host time (`benchmarks/launch_host_cost.py`: Triton's launch 44-64 us on an H200 host, the
compiled kernel's own launcher 15-18 us). `DirectLauncher` keys each launch on everything Triton's JIT specializes on:
each tensor's dtype and 16-byte alignment, each integer's type, width class and whether it is 1 or a multiple of 16,
plus the constexprs, the launch options, the device and the JIT's debug knobs. The first launch of a key goes through
Triton, which compiles or finds the kernel; its `CompiledKernel` then serves every later launch with that key. The key
is at least as fine as Triton's own, so it never reaches a binary built for other argument properties. Launch hooks (a
profiler) and the interpreter take Triton's path on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from triton import knobs
from triton.runtime import driver

from .launch import INTERPRETED

_INT32 = range(-(1 << 31), 1 << 31)


def _specialization(arg: Any) -> Any:
    """What Triton's JIT may specialize a launch on, for one argument (finer where unsure)."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() & 15 == 0
    if type(arg) is int:
        return arg == 1, arg & 15 == 0, arg in _INT32, arg >= 1 << 63
    return type(arg), arg if type(arg) is bool else None


class DirectLauncher:
    """Launches `kernel` (a `triton.jit` function whose constexpr parameters come last) as `kernel[grid](*args,
    **constants, **options)` would."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.binaries: dict[tuple, Any] = {}
        if INTERPRETED:  # an `InterpretedFunction`: always Triton's path
            return
        kinds = [param.is_constexpr for param in kernel.params]
        if kinds != sorted(kinds):
            raise ValueError(f"{kernel.fn.__name__}: constexpr parameters must come after all the others")
        self.constexpr_names = tuple(param.name for param in kernel.params if param.is_constexpr)
        self.num_args = len(kinds) - len(self.constexpr_names)

    def __call__(
        self, grid: tuple[int, int, int], args: Sequence[Any], constants: dict[str, Any], **options: Any
    ) -> None:
        runtime = knobs.runtime
        if INTERPRETED or runtime.launch_enter_hook.calls or runtime.launch_exit_hook.calls:  # `HookChain`s
            self.kernel[grid](*args, **constants, **options)
            return
        if len(args) != self.num_args:
            raise TypeError(f"{self.kernel.fn.__name__} takes {self.num_args} arguments, got {len(args)}")
        device = driver.active.get_current_device()
        values = tuple(constants[name] for name in self.constexpr_names)
        key = (
            device,
            values,
            tuple(options.items()),
            runtime.debug,
            knobs.compilation.instrumentation_mode,
            *map(_specialization, args),
        )
        binary = self.binaries.get(key)
        if binary is None:
            self.binaries[key] = self.kernel[grid](*args, **constants, **options)
            return
        stream = driver.active.get_current_stream(device)
        binary.run(*grid, stream, binary.function, binary.packed_metadata, None, None, None, *args, *values)
