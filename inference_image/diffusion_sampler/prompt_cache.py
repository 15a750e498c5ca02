"""A bounded LRU of prompt embeddings, so a repeated prompt skips the text encoder.

Keys are ``(revision, prompt, negative_prompt)``; values are whatever the engine stores (the
positive and negative embeddings of one image, on the device). Only the worker thread touches
it, so nothing here locks. This module must not import torch: it holds opaque values.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most ``capacity`` entries; the least recently used one goes first. Capacity 0 keeps nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        if self.capacity == 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
