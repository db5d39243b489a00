"""Weight-space interpolation of two encoders (WiSE-FT, Wortsman et al., CVPR 2022).

``θ = (1 − α)·θ_A + α·θ_B`` tensor by tensor, for two models of the same
architecture and tokenizer: A is usually the start model (zero-shot), B the
fine-tuned one, so α = 0 gives A back and α = 1 gives B. WiSE-FT keeps much of
what A knew (transfer, unseen documents) while keeping most of B's in-domain gain.

Two shared encoders interpolate every weight. When either side has separate
towers (an ADORE output: trained query tower, fixed document tower), only the
query towers are interpolated; both document towers must be the same weights,
and the result keeps that document tower bit for bit, so the corpus embeddings
and indexes cached for it (keyed by its weights) stay valid: nothing is re-encoded.
"""

from __future__ import annotations

import copy

import torch

from hardneg.errors import HardnegError
from hardneg.model.encoder import DualEncoder
from hardneg.model.fingerprints import tokenizer_fingerprint


def _check_same_architecture(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if missing or extra:
        names = ", ".join((missing + extra)[:5])
        raise HardnegError(f"{what}: the two models have different weights ({len(missing) + len(extra)} names "
                           f"differ, e.g. {names}); interpolation needs one architecture")
    for name, tensor in a.items():
        if tensor.shape != b[name].shape:
            raise HardnegError(f"{what}: {name} is {tuple(tensor.shape)} in A but {tuple(b[name].shape)} in B; "
                               "interpolation needs one architecture")


def interpolate(a: DualEncoder, b: DualEncoder, alpha: float) -> DualEncoder:
    """``(1 − alpha)·A + alpha·B`` as a new :class:`DualEncoder` (A and B are left unchanged)."""
    if not 0.0 <= alpha <= 1.0:
        raise HardnegError(f"--alpha {alpha}: the interpolation weight of B must be in [0, 1]")
    if tokenizer_fingerprint(a.tokenizer) != tokenizer_fingerprint(b.tokenizer):
        raise HardnegError("the two models have different tokenizers; interpolation needs one tokenizer")
    for key in ("pooling", "normalize"):
        if getattr(a.config, key) != getattr(b.config, key):
            raise HardnegError(f"the two models differ in {key} ({getattr(a.config, key)!r} vs "
                               f"{getattr(b.config, key)!r}); interpolation needs one encoder kind")
    shared = a.config.shared and b.config.shared
    if not shared:
        a, b = a.with_separate_towers(), b.with_separate_towers()
        doc_a, doc_b = a.doc_model.state_dict(), b.doc_model.state_dict()
        _check_same_architecture(doc_a, doc_b, "document towers")
        differ = [n for n in doc_a if not torch.equal(doc_a[n], doc_b[n])]
        if differ:
            raise HardnegError(
                f"the document towers differ ({len(differ)} tensors, e.g. {differ[0]}): with separate towers "
                "(ADORE) only the query towers are interpolated, so both models need the same fixed document "
                "encoder (e.g. A = ADORE's start model, B = the ADORE output)")
    out = copy.deepcopy(b)
    trained = out.doc_model if shared else out.query_model
    sa = (a.doc_model if shared else a.query_model).state_dict()
    sb = trained.state_dict()
    _check_same_architecture(sa, sb, "encoders" if shared else "query towers")
    merged = {}
    for name, tb in sb.items():
        ta = sa[name]
        if torch.is_floating_point(tb):
            merged[name] = ((1.0 - alpha) * ta.to(torch.float32) + alpha * tb.to(torch.float32)).to(tb.dtype)
        elif torch.equal(ta, tb):  # integer buffers (e.g. position ids) must agree
            merged[name] = tb
        else:
            raise HardnegError(f"{name}: non-float buffers differ between the models; cannot interpolate")
    trained.load_state_dict(merged)
    out.source = f"interpolate({a.source}, {b.source}, alpha={alpha:g})"
    return out


__all__ = ["interpolate"]
