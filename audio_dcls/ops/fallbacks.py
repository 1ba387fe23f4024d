"""The safety net of the Triton kernels: a failing kernel falls back to the stock route.

A Triton kernel can fail to compile or launch on a GPU/Triton combination
that CI never saw (compile errors surface as many exception types, by backend
and version). Rather than stop a training run, the shape's call is answered
by the stock PyTorch route, with one warning, and the shape is remembered so
later calls go straight to the stock route. ``fallback_events()`` in
``audio_dcls.ops.config`` lists what happened; strict mode
(``AUDIO_DCLS_TRITON_STRICT=1``) raises instead, which is how the kernel tests run.

The registry is an object owned by the ops switchboard (``ops.config``); this
module holds no state of its own.
"""
from __future__ import annotations

import warnings
from typing import Callable, Hashable, List, Set, Tuple, TypeVar

import torch

T = TypeVar("T")


class FallbackRegistry:
    """Which (kernel kind, shape key) pairs failed, and a record of each failure."""

    def __init__(self) -> None:
        self._failed: Set[Tuple[str, Hashable]] = set()
        self._events: List[dict] = []

    def guarded(self, kind: str, key: Hashable, triton_call: Callable[[], T], stock_call: Callable[[], T], strict: bool) -> T:
        """``triton_call()``, or ``stock_call()`` once the Triton kernel of (kind, key) has failed."""
        if (kind, key) in self._failed:
            return stock_call()
        try:
            return triton_call()
        except torch.cuda.OutOfMemoryError:
            raise  # the stock route would need the memory too; not a kernel problem
        except Exception as err:  # noqa: BLE001 - compile errors surface as many types
            if strict:
                raise
            self._failed.add((kind, key))
            self._events.append({"kind": kind, "key": str(key), "error": f"{type(err).__name__}: {err}"[:500]})
            warnings.warn(f"Triton {kind} kernel failed for {key}; using the stock route: {type(err).__name__}: {err}")
            return stock_call()

    def events(self) -> List[dict]:
        """One dict per failure: kind, shape key, error (a copy)."""
        return [dict(e) for e in self._events]
