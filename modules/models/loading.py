"""Model loading and saving without transformers' per-call progress bars.

transformers (5.x) draws a bar for every `from_pretrained` ("Loading weights") and `save_pretrained` ("Writing model
shards"). A run loads several models (the policy, its frozen reference copy, a scorer...) and saves adapters
periodically, and each call's bar is noise in the log. `quiet_progress()` hides those bars inside the block only,
through transformers' tqdm hook: huggingface_hub's download bars, and anything outside the block, are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No transformers progress bars (weights loading / shard writing) inside the block; restored after.

    >>> from transformers.utils import logging as hf_logging
    >>> with quiet_progress():
    ...     bar = hf_logging.tqdm(range(3), desc="Loading weights")
    >>> type(bar).__name__, list(bar)
    ('EmptyTqdm', [0, 1, 2])
    """
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:  # older transformers: no hook (and no per-load bar for a single-file checkpoint)
        yield
        return
    previous = set_hook(lambda factory, args, kwargs: hf_logging.EmptyTqdm(*args, **kwargs))
    try:
        yield
    finally:
        set_hook(previous)


__all__ = ["quiet_progress"]
