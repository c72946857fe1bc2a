"""Constructor options saved in the state dict: :class:`OptionsInState`, the mixin for encodings whose options
change what their parameters mean without changing their shapes."""

from __future__ import annotations

import json
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor


class OptionsInState:
    """Mixin (listed before the encoding's base) for an encoding whose constructor options change what its
    parameters mean without changing their shapes (T5's ``max_distance``, Kerple's ``kind``): a state_dict loaded
    into one built with other values would fit and silently give another function.

    ``state_options`` names those options. They are saved in the state_dict as the module's extra state, a
    ``uint8`` tensor holding them as JSON (a tensor, so ``safetensors`` and tensor-only code keep working;
    ``weights_only`` loads read it). ``load_state_dict`` into a module built with other values fails the way a
    shape mismatch does: torch raises ``RuntimeError`` at the end (strict or not) naming the options and both
    values, the rest of the model loaded; nothing of this module (its submodules included) is copied. A
    state_dict without them (saved before they were recorded) loads as before, strict or not.
    """

    state_options: ClassVar[tuple[str, ...]] = ()

    def recorded_options(self) -> dict[str, bool | int | float | str | None]:
        """``state_options`` and their values, as plain JSON values."""
        return {name: _plain(getattr(self, name)) for name in self.state_options}

    def get_extra_state(self) -> Tensor:
        text = json.dumps(self.recorded_options(), sort_keys=True)
        return torch.tensor(list(text.encode()), dtype=torch.uint8)  # (bytes,)

    def set_extra_state(self, state: Any) -> None:
        problem = self._options_problem(state)  # (already checked before any tensor was copied)
        if problem is not None:
            raise ValueError(f"{type(self).__name__}: {problem}")

    def _options_problem(self, state: Any) -> str | None:
        """Why ``state`` (a saved extra state) does not fit this module, or None."""
        try:  # (int(): a blanket `.to(torch.bfloat16)` of the state_dict keeps these small integers exact)
            saved = (
                json.loads(bytes(int(b) for b in state.tolist()).decode())
                if isinstance(state, Tensor)
                else None
            )
        except (UnicodeDecodeError, ValueError, TypeError):
            saved = None
        if not isinstance(saved, dict):
            return f"the saved options should be JSON in a uint8 tensor, as posenc saves them; got {type(state).__name__}"
        mine = self.recorded_options()
        differ = [n for n in self.state_options if n in saved and saved[n] != mine[n]]
        if not differ:
            return None
        got = ", ".join(f"{n}={saved[n]!r}" for n in differ)
        have = ", ".join(f"{n}={mine[n]!r}" for n in differ)
        return (
            f"the state_dict was saved from a {type(self).__name__} with {got}, but this one has {have}; its "
            f"parameters would mean something else here: build it with {got}"
        )

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        key = prefix + "_extra_state"
        problem = self._options_problem(state_dict[key]) if key in state_dict else None
        if problem is not None:  # as a shape mismatch: torch raises at the end, strict or not
            error_msgs.append(f"{prefix.rstrip('.') or type(self).__name__}: {problem}")
            for k in [k for k in state_dict if k.startswith(prefix)]:  # (this call's own copy of the dict)
                del state_dict[k]
            own = self.state_dict(prefix=prefix, keep_vars=True)  # type: ignore[attr-defined]
            state_dict.update((k, v) for k, v in own.items() if k != key)  # submodules "load" what they hold
            return
        seen = len(missing_keys)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if key in missing_keys[seen:]:  # saved before the options were recorded: nothing to check
            missing_keys.remove(key)


def _plain(value: object) -> bool | int | float | str | None:
    """A recorded option as a plain JSON value (a ``str`` or ``float`` subclass, such as numpy's, as the base type)."""
    if value is None or isinstance(value, bool):
        return value
    for abstract, kind in ((numbers.Integral, int), (numbers.Real, float), (str, str)):
        if isinstance(value, abstract):
            return kind(value)  # type: ignore[no-any-return, arg-type]
    raise TypeError(f"an option recorded in the state_dict must be a bool, number or string, got {value!r}")
