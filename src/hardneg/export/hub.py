"""``--push-to-hub``: upload an exported model folder to a Hugging Face model repo."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hardneg.errors import HardnegError


def check_repo_id(repo_id: str) -> None:
    """A HardnegError for a repo id the hub would refuse (before any export work)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HardnegError(f"--push-to-hub {repo_id!r}: not a valid repo id ({exc}); give `user/name` "
                           "or `org/name`") from None


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Create (or reuse) the model repo ``repo_id`` and upload ``folder``; returns the repo URL.

    The token is ``token``, else ``HF_TOKEN``, else the one ``huggingface-cli login`` stored."""
    check_repo_id(repo_id)
    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                          commit_message=commit_message or "Upload model exported by hardneg")
    except Exception as exc:  # no network, offline mode, bad token, no write access, ...
        raise HardnegError(
            f"--push-to-hub {repo_id}: the upload failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]}); "
            f"the exported model is still in {folder}. Check the network, --token / HF_TOKEN (a write token) "
            "and that you may write to that namespace"
        ) from exc
    return str(url)


__all__ = ["check_repo_id", "push_to_hub"]
