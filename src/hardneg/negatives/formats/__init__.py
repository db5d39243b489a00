"""Mined negatives in the field's file formats: hardneg's TSV, sentence-transformers data, Tevatron JSONL.

Formats (``hardneg mine --format``; ``hardneg train --negatives`` reads all three, see
:func:`~hardneg.negatives.formats.files.detect_format`)
-----------------------------------------------------------------------------------------------------
``tsv``
    ``qid<TAB>docid<TAB>rank`` (an MS MARCO run, rank from 1); a TREC run (``qid Q0 docid rank score
    tag``) is read too, told apart by column count (:mod:`.tsv`).
``st``
    sentence-transformers' "n-tuple" training data (the ``output_format="n-tuple"`` of
    ``sentence_transformers.util.mine_hard_negatives``): columns ``anchor``, ``positive``,
    ``negative_1 … negative_n``, all texts, one row per (query, positive). Written as JSONL when the
    path ends in ``.jsonl`` (``datasets.load_dataset("json", data_files=…)`` loads it), else as a
    ``datasets`` folder (``Dataset.save_to_disk``). As in ST, every row has the same ``n`` (here the
    longest list written) and a query with fewer negatives gets no row (counted and logged).
    Document texts are ``Doc.full_text()`` (``title + " " + text``, what hardneg encodes); query
    texts are the dataset's. ST's triplet column ``negative`` is read as ``negative_1`` (:mod:`.st`).
``tevatron``
    Tevatron's "relevancy judged" JSONL (Tevatron docs/datasets.md): one line per query,
    ``{"query_id", "query", "positive_passages": [{"docid", "title", "text"}], "negative_passages": […]}``;
    negatives in rank order. Queries without a positive in the corpus get no line (Tevatron needs one)
    (:mod:`.tevatron`).

Reading
-------
Tevatron and TSV files are read by id. ST data carries only texts, so it is mapped back with the
dataset: the anchor to the query with exactly that text, each negative to the document whose
``full_text()`` is exactly that text. A query text shared by several queries is resolved by the
row's positive (the one query that has it as a positive); a document text shared by several
documents (NFCorpus has 80 such documents) goes to the first of them in corpus order: their text,
hence what the model sees, is identical. Unknown texts, a query text still ambiguous, and a
negative whose text is that of one of the query's own positives are :class:`~hardneg.errors.InputError`
with ``file:line`` (``folder: row N`` for a ``datasets`` folder).

Writing
-------
The text formats are written by one streaming writer (:mod:`.writer`: the documents go through a
temporary SQLite table filled by one pass over the corpus), whether the negatives are in memory
(:func:`~hardneg.negatives.formats.files.write_negatives`) or streamed from ``hardneg mine``'s partial
file. Writes are atomic (:func:`hardneg.io.atomic_write`, :func:`hardneg.io.commit_dir`).

Modules: :mod:`.common` (names, checks, counts), :mod:`.tsv`, :mod:`.tevatron`, :mod:`.st`, :mod:`.writer`,
and :mod:`.files` (detect, read and write any format: the entry points).
"""
