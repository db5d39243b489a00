"""Exporting a trained model: one sentence-transformers folder (:mod:`.st_model`), its model card
(:mod:`.card`, made from the runs and evaluations on disk, :mod:`.sources`) and the upload to the
Hugging Face hub (:mod:`.hub`).

It sits above training (it reads training runs and their settings) and below the experiment layer and
the CLI (``hardneg export``).
"""
