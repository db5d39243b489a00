"""One sentence-transformers folder from a hardneg encoder (what ``hardneg export`` writes).

A shared encoder is its :meth:`~hardneg.model.encoder.DualEncoder.save` folder (already a
sentence-transformers folder). Separate towers (ADORE) become a sentence-transformers ``Router``
model: ``encode_query`` runs the query tower, ``encode_document`` (and plain ``encode``) the
document tower.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hardneg.io import commit_dir
from hardneg.model.encoder import QUERY_TOWER_DIR, DualEncoder


def export_sentence_transformers(encoder: DualEncoder, directory: str | os.PathLike[str]) -> Path:
    """A folder ``SentenceTransformer(directory)`` loads with both of ``encoder``'s towers."""
    if encoder.config.shared:
        return encoder.save(directory)
    # heavy (seconds): imported only for a two-tower export
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6 moved the modules; 5.x has them under .models
        from sentence_transformers.base.modules.router import Router
    except ImportError:
        from sentence_transformers.models import Router

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        encoder.save(work / "pair")
        query = SentenceTransformer(str(work / "pair" / QUERY_TOWER_DIR), device="cpu")
        doc = SentenceTransformer(str(work / "pair"), device="cpu")
        router = Router.for_query_document(query_modules=list(query), document_modules=list(doc))
        SentenceTransformer(modules=[router], device="cpu").save(str(work / "st"))
        commit_dir(work / "st", directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return directory


__all__ = ["export_sentence_transformers"]
