"""Reading collections, queries and qrels into typed records."""

from __future__ import annotations

from hardneg.data.readers import (
    Dataset,
    QrelsStats,
    load_dataset,
    parse_spec,
    read_beir_corpus,
    read_beir_queries,
    read_corpus,
    read_msmarco_collection,
    read_msmarco_queries,
    read_qrels,
    read_queries,
    read_trec_topics,
)
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
    "read_trec_topics",
]
