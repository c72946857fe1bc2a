"""Fall back once, for good: a fast path that cannot run on this machine is not tried again.

``auto`` choices (FlexAttention for ``backend="auto"``, the fused RoPE kernels for ``impl="auto"``) run the fast
path through :meth:`Fallback.run`; if it raises anything but bad input (``ValueError``, ``TypeError``: the
caller's to fix) or running out of memory (a property of this call, not of the machine), the slow path is run:
if it succeeds, the failure is logged once as a warning, the name is remembered, and the slow path's result is
returned; if it fails too, the input was at fault (an error torch raises as ``RuntimeError``) and that error is
raised, the fast path left usable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger("posenc")
T = TypeVar("T")


#: Failures that say nothing about whether the fast path can run here: bad input, and memory this call lacked.
NOT_MACHINE: tuple[type[BaseException], ...] = (ValueError, TypeError, torch.OutOfMemoryError)


class Fallback:
    """Which fast paths of one ``kind`` ("attention backend", "RoPE kernel") failed here.

    Attributes:
        failed: names that raised once; :meth:`usable` is False for them from then on.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.failed: set[str] = set()

    def usable(self, name: str) -> bool:
        return name not in self.failed

    def run(self, name: str, fast: Callable[[], T], slow: Callable[[], T], slow_name: str) -> T:
        """``fast()``; on a failure other than those in :data:`NOT_MACHINE` warn once, mark ``name`` failed, return
        ``slow()``. Those propagate and leave ``name`` usable: an out-of-memory error on one large batch used to
        turn the fast path off for the rest of the process.

        Under ``torch.compile`` tracing ``fast`` runs unguarded (a try/except would break the graph).
        """
        if torch.compiler.is_compiling():
            return fast()
        try:
            return fast()
        except NOT_MACHINE:
            raise
        except Exception as err:  # a missing C++ compiler, an unsupported device: same result, slower path
            if out_of_memory(err):
                raise
            result = slow()  # raises if the input was at fault: then the fast path stays usable
            self.failed.add(name)
            log.warning(
                "posenc: %s %s failed here (%s); using %s from now on", self.kind, name, err, slow_name
            )
            return result

    def reset(self) -> None:
        """Forget the failures (tests)."""
        self.failed.clear()


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure: ``torch.OutOfMemoryError`` (a GPU), or the CPU allocator's
    ``RuntimeError`` ("can't allocate memory"), or Python's ``MemoryError``."""
    return isinstance(err, torch.OutOfMemoryError | MemoryError) or "can't allocate memory" in str(err)
