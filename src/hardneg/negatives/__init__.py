"""Hard negatives: where candidates come from, which of them become negatives, and the files they are kept in.

One package for everything about negatives, between :mod:`hardneg.evaluate` and :mod:`hardneg.train` in the
layers (it never imports training, experiments, export or the CLI). Its modules, lowest first:

=====================  =================================================================================
:mod:`.rules`          :class:`~.rules.NegativeRules`: THE declaration of the selection settings (name,
                       type, default, help text, choices); ``TrainConfig``'s fields and ``hardneg mine``'s
                       flags are generated from it
:mod:`.selection`      the rules applied to one query (:func:`~.selection.select_one`) and to many
                       (:func:`~.selection.select_negatives`, with a teacher's scores when given)
:mod:`.diagnostics`    what the rules did (counts, histograms): ``negatives_diagnostics.json``
:mod:`.teachers`       bi-encoder and CrossEncoder teachers and their on-disk score cache
:mod:`.sampling`       the first top-k non-positives of a run; random and static (STAR) samplers; SimANS' law
:mod:`.formats`        negatives files: TSV / TREC run, sentence-transformers data, Tevatron JSONL
:mod:`.sources`        candidates from a negatives/run file and from a dense model (index, search,
                       positives' scores, query vectors)
:mod:`.stream`         ``hardneg mine``: chunked, resumable mining with byte-identical output
:mod:`.drift`          how far a run's static negatives drift from the current model's (``--track-every``)
=====================  =================================================================================

A training run's use of them (its :class:`~hardneg.train.methods.base.MethodContext`, mining with the current
weights under torchrun) is the thin adapter :mod:`hardneg.train.methods.mining`.
"""
