"""Triton kernel modules rebuilt for Triton's CPU interpreter (or for a GPU target) within a test."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest


@contextmanager
def _triton_built(interpret: bool) -> Iterator[tuple[ModuleType, ModuleType]]:
    """``(triton_rope, triton_rope_at)`` rebuilt with ``TRITON_INTERPRET`` as asked (triton reads it when a
    kernel is decorated); afterwards the variable is restored and the modules are rebuilt again."""
    saved = os.environ.get("TRITON_INTERPRET")
    if interpret:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    import posenc.kernels.triton_rope as base
    import posenc.kernels.triton_rope_at as at

    try:
        base = importlib.reload(base)
        yield base, importlib.reload(at)  # the positions kernel imports the rebuilt shared rotation
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved
        importlib.reload(base)
        importlib.reload(at)


@pytest.fixture
def triton_interpreted() -> Iterator[tuple[ModuleType, ModuleType]]:
    """``(triton_rope, triton_rope_at)`` built for Triton's CPU interpreter."""
    with _triton_built(interpret=True) as modules:
        yield modules


@pytest.fixture
def triton_for_gpu() -> Iterator[tuple[ModuleType, ModuleType]]:
    """``(triton_rope, triton_rope_at)`` built as for a GPU (compiled ahead of time by the tests, never run)."""
    with _triton_built(interpret=False) as modules:
        yield modules


#: ``(kernel, pointer dtypes by argument, constexpr values) -> PTX`` of the kernel compiled for sm_90.
CompileSm90 = Callable[[Any, dict[str, str], dict[str, Any]], str]


@pytest.fixture
def compile_sm90() -> CompileSm90:
    """Compile a kernel of :func:`triton_for_gpu`'s modules for an sm_90 target, ahead of time (no GPU needed):
    every argument not named is an ``i32``. Skips where this triton cannot compile ahead of time."""
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, compile
    except ImportError:
        pytest.skip("this triton has no ahead-of-time compile API")

    def run(
        kernel: Any,
        pointers: dict[str, str],
        constants: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> str:
        signature = {name: "i32" for name in kernel.arg_names}
        signature.update(pointers)
        signature.update({name: "constexpr" for name in constants})
        source = ASTSource(kernel, signature, {(kernel.arg_names.index(n),): v for n, v in constants.items()})
        try:
            compiled = compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        except RuntimeError as err:  # no CUDA toolchain bundled with this triton build
            if "ptxas" in str(err).lower():
                pytest.skip(str(err))
            raise
        return str(compiled.asm["ptx"])

    return run


#: ``(module, kernel name) -> the grids it is launched with``, the launch itself skipped.
RecordGrids = Callable[[ModuleType, str], list[tuple[int, ...]]]


@pytest.fixture
def record_grids(monkeypatch: pytest.MonkeyPatch) -> RecordGrids:
    """Replace a kernel of a module by a recorder of its launch grids (nothing runs)."""

    def record(module: ModuleType, kernel: str) -> list[tuple[int, ...]]:
        grids: list[tuple[int, ...]] = []

        class Recorder:
            def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
                grids.append(grid)
                return lambda *args, **kwargs: None

        monkeypatch.setattr(module, kernel, Recorder())
        return grids

    return record
