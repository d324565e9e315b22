"""torch.compile for code that calls genrec's ops.

The CPU attention op saves buffers whose sizes depend on the batch's lengths (the padded
layout, the tiles' logits). Dynamo traces such an op only with
``capture_dynamic_output_shape_ops``; without it, every call is a graph break, and a break
inside a model's loop over layers makes Dynamo skip the whole forward. The flag is set only
while the compiled function runs, not for the rest of the process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Compiled:
    """``torch.compile(fn, dynamic=True)``, called with the flag above; attributes of a
    compiled module (``eval()``, ``item_embeddings``, ...) come from the module itself."""

    def __init__(self, fn: Callable) -> None:
        self._fn = fn
        self._compiled = torch.compile(fn, dynamic=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            return self._compiled(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fn, name)


def compile_dynamic(fn: Callable) -> Compiled:
    """torch.compile ``fn`` (a function or module) for jagged batches of varying sizes."""
    return Compiled(fn)
