"""Where pretrained weights come from: a local folder / file, or the Hugging Face hub cache.

A model id is either a path (a folder saved with ``save_pretrained``, an open_clip folder,
a checkpoint file) or a hub id (``facebook/dinov2-base``). Hub ids resolve through the hub
cache (``HF_HOME`` / ``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` nothing is fetched. When the
weights are neither local nor cached and cannot be fetched, ``WeightsNotFoundError`` says what
to download and where to put it. Weights are never copied into a project: the encoder's
``encoder.json`` records where they came from (``WeightsSource``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.errors import WeightsNotFoundError

log = logging.getLogger(__name__)

HUB_PATTERNS = ("*.json", "*.safetensors")  # configs, processor configs and weights; no pickles


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's files were found.

    Attributes:
        model_id: what the user asked for (hub id, folder or file).
        path: the local folder (or file) the weights were read from.
        source: "local" (a path given by the user) or "hub" (the hub cache).
        revision: the hub commit of the cached snapshot, when known.
    """

    model_id: str
    path: str
    source: str
    revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (read now, not at import time)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False


def hub_cache() -> str:
    """The hub cache folder (``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def is_path(model_id: str) -> bool:
    """True when ``model_id`` names a local path rather than a hub id ``org/name``."""
    if Path(model_id).expanduser().exists():
        return True
    return (model_id.startswith(("/", "./", "../", "~", "\\"))
            or model_id.count("/") > 1 or (len(model_id) > 1 and model_id[1] == ":"))


def missing_message(model_id: str, reason: str, *, files: tuple[str, ...] = (),
                    local_hint: str = "--model-id FOLDER", gated: bool = False) -> str:
    """One sentence-per-line message: what is missing, what to download, where to put it."""
    name = model_id.rsplit("/", 1)[-1]
    wanted = "".join(f" {f}" for f in files)
    folder = f"/models/{name}"
    lines = [
        f"weights for {model_id!r} are not available here ({reason}).",
        f"Download them where there is internet access, either into the hub cache "
        f"(`hf download {model_id}{wanted}`, then copy {hub_cache()} to this machine or point "
        f"HF_HOME at a copy) or into a folder (`hf download {model_id}{wanted} --local-dir "
        f"{folder}`) and use {local_hint.replace('FOLDER', folder)}.",
    ]
    if gated:
        lines.append(f"This repository is gated: accept its licence on "
                     f"https://huggingface.co/{model_id} and log in with `hf auth login` first.")
    if hub_offline():
        lines.append("HF_HUB_OFFLINE is set, so nothing is downloaded.")
    return " ".join(lines)


def _hub_failure(exc: Exception) -> tuple[str, bool]:
    """(short reason, gated?) for an exception raised by a hub download."""
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return "the repository is gated", True
    if isinstance(exc, errors.RepositoryNotFoundError):
        return "no such repository on the hub, or it is private", False
    if isinstance(exc, (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError)):
        return "not in the hub cache and the hub cannot be reached", False
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", False


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub import errors

    kinds: list[type[BaseException]] = [errors.HfHubHTTPError, errors.LocalEntryNotFoundError,
                                        errors.OfflineModeIsEnabled, OSError, ValueError]
    try:
        import httpx

        kinds.append(httpx.HTTPError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def resolve_folder(model_id: str, *, need: tuple[str, ...] = ("config.json",),
                   weights_glob: str = "*.safetensors",
                   local_hint: str = "--model-id FOLDER", gated: bool = False) -> WeightsSource:
    """A local folder holding ``need`` and at least one ``weights_glob`` file.

    Args:
        model_id: a folder path, or a hub id resolved through the hub cache (downloading
            ``*.json`` and ``*.safetensors`` unless offline).
        need: files that must exist in the folder.
        weights_glob: pattern of the weight files.
        local_hint: how the user passes a folder (for the message).
        gated: the repository needs an accepted licence (said in the message).

    Raises:
        WeightsNotFoundError: the folder or its files are missing and cannot be fetched.
    """
    if is_path(model_id):
        folder = Path(model_id).expanduser()
        if not folder.is_dir():
            raise WeightsNotFoundError(
                f"model folder {str(folder)!r} does not exist; pass a folder saved with "
                f"save_pretrained (config.json + *.safetensors) or a hub id")
        _check_files(folder, model_id, need, weights_glob, local_hint)
        return WeightsSource(model_id=model_id, path=str(folder.resolve()), source="local")
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id=model_id, allow_patterns=list(HUB_PATTERNS),
                                      local_files_only=hub_offline()))
    except _hub_errors() as exc:
        reason, is_gated = _hub_failure(exc)
        raise WeightsNotFoundError(missing_message(
            model_id, reason, local_hint=local_hint, gated=gated or is_gated)) from exc
    _check_files(path, model_id, need, weights_glob, local_hint)
    revision = path.name if path.parent.name == "snapshots" else None
    return WeightsSource(model_id=model_id, path=str(path), source="hub", revision=revision)


def _check_files(folder: Path, model_id: str, need: tuple[str, ...], weights_glob: str,
                 local_hint: str) -> None:
    missing = [f for f in need if not (folder / f).is_file()]
    if not any(folder.glob(weights_glob)):
        missing.append(weights_glob)
    if missing:
        raise WeightsNotFoundError(
            missing_message(model_id, f"{folder} lacks {', '.join(missing)}",
                            local_hint=local_hint))


def resolve_file(repo_id: str, filenames: tuple[str, ...],
                 local_hint: str = "--model-id FOLDER",
                 message_files: tuple[str, ...] = ()) -> WeightsSource:
    """The first of ``filenames`` found in hub repo ``repo_id`` (cache first; fetch if online).

    Raises:
        WeightsNotFoundError: none of them is cached and none can be fetched.
    """
    from huggingface_hub import hf_hub_download

    failure: Exception | None = None
    for name in filenames:
        try:
            path = Path(hf_hub_download(repo_id=repo_id, filename=name,
                                        local_files_only=hub_offline()))
        except _hub_errors() as exc:
            failure = exc
            continue
        revision = path.parent.name if path.parent.parent.name == "snapshots" else None
        return WeightsSource(model_id=repo_id, path=str(path), source="hub", revision=revision)
    if failure is None:
        raise WeightsNotFoundError(f"no file names given for {repo_id!r}")
    reason, gated = _hub_failure(failure)
    raise WeightsNotFoundError(missing_message(repo_id, reason, files=message_files,
                                               local_hint=local_hint, gated=gated)) from failure
