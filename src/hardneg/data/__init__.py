"""Reading collections, queries and qrels into typed records.

Modules, each importing only those before it: ``cache`` (where the cache folder is),
``lines`` (strict line reading), ``ids`` (the compact id set), ``formats`` (one reader module
per format: BEIR, MS MARCO, TREC topics/qrels, TREC SGML, SMART, classic collections, archives,
ir_datasets),
``dataset`` (:class:`Dataset`) and ``load`` (dataset specs, :func:`load_dataset`).
Every file may be ``.gz``/``.bz2``/``.xz`` compressed.
"""

from __future__ import annotations

from hardneg.data.dataset import Dataset
from hardneg.data.formats import read_corpus, read_queries
from hardneg.data.formats.beir import read_beir_corpus, read_beir_queries
from hardneg.data.formats.msmarco import read_msmarco_collection, read_msmarco_queries
from hardneg.data.formats.sgml import read_trec_docs
from hardneg.data.formats.trec import QrelsStats, read_qrels, read_trec_topics
from hardneg.data.load import load_dataset, parse_spec
from hardneg.data.records import Doc, Qrel, Qrels, Query, qrels_to_dict

__all__ = [
    "Dataset",
    "Doc",
    "Qrel",
    "Qrels",
    "QrelsStats",
    "Query",
    "load_dataset",
    "parse_spec",
    "qrels_to_dict",
    "read_beir_corpus",
    "read_beir_queries",
    "read_corpus",
    "read_msmarco_collection",
    "read_msmarco_queries",
    "read_qrels",
    "read_queries",
    "read_trec_docs",
    "read_trec_topics",
]
