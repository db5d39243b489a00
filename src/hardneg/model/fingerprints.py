"""Identity hashes of a model's parts: its tokenizer (vocabulary and normalisation) and its weights. Cache keys
(tokenized stores, embeddings, indexes, teacher scores) and the checks that a model still matches what a cache or
an index was built with are made of them."""

from __future__ import annotations

import hashlib
import json
import weakref

import torch
from torch import nn

_TOKENIZER_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of the tokenizer's vocabulary and normalisation rules (cached per tokenizer object and
    vocabulary size: serialising a fast tokenizer costs ~0.1 s, and cache keys ask for it often)."""
    try:
        size, cached = _TOKENIZER_FINGERPRINTS[tokenizer]
        if size == len(tokenizer):
            return cached
    except (KeyError, TypeError):
        pass
    fingerprint = _tokenizer_fingerprint(tokenizer)
    try:
        _TOKENIZER_FINGERPRINTS[tokenizer] = (len(tokenizer), fingerprint)
    except TypeError:  # not weak-referenceable: no cache
        pass
    return fingerprint


def _tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # truncation/padding are call-time settings the tokenizer remembers; not identity
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:  # slow tokenizer
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()[:16]


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer (changes whenever training changes the weights)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
