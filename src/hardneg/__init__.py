"""hardneg: train and evaluate dense retrievers with hard negatives.

The package reads like the pipeline it runs::

    collection -> tokenized store -> encoder -> embeddings -> index -> run -> metrics
     (data/)        (data/)          (model/)    (index/)     (index/) (retrieval/) (evaluate/)
"""

from __future__ import annotations

__version__ = "0.1.0"

from hardneg.errors import HardnegError, InputError

__all__ = ["HardnegError", "InputError", "__version__"]
