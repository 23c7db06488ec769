"""Loading evaluation data from the Hugging Face hub, and knowing fast when that cannot work.

Offline, `datasets.load_dataset` retries for ~25 s before it gives up on each dataset; one HEAD
request to the hub (once per process) tells in a fraction of a second. With `HF_HUB_OFFLINE=1`
datasets reads its local cache, so the load is tried without asking the hub.
"""

from __future__ import annotations

import functools


class HubUnavailable(RuntimeError):
    """The hub cannot serve a dataset now (offline, unreachable, not in the offline cache)."""


@functools.cache
def hub_unreachable_reason(timeout: float = 5.0) -> str | None:
    """None when the hub answers; otherwise why not, in a few words."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as error:  # any transport error means the same thing here: no hub
        return f"the hub ({constants.ENDPOINT}) is unreachable: {error}"
    return None


def load_hub_dataset(path: str, **load_kwargs):
    """`datasets.load_dataset(path, ...)`, raising `HubUnavailable` (at once when offline) instead of
    retrying against an unreachable hub."""
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        reason = hub_unreachable_reason()
        if reason:
            raise HubUnavailable(reason)
    try:
        return datasets.load_dataset(path, **load_kwargs)
    except ConnectionError as error:
        raise HubUnavailable(str(error)) from error
