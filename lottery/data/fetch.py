"""Missing files: the optional torchvision download and the error that explains what to do."""
from __future__ import annotations

from pathlib import Path

from lottery.data.dataset import DataError


def torchvision_download(class_name: str, root: Path) -> str | None:
    """Let torchvision.datasets.<class_name> download into root; an error text, or None on success."""
    import torchvision

    try:
        getattr(torchvision.datasets, class_name)(str(root), train=True, download=True)
    except Exception as error:  # network, disk, checksum: all end in the same DataError
        return f"{type(error).__name__}: {error}"
    return None


def missing_files_error(name: str, folder: Path, missing: list[str], parent_of: str, download_error: str | None) -> DataError:
    """A DataError naming the absent files and where they were expected, with the remedies."""
    message = (f"{name}: missing files in {folder}: {', '.join(missing)}. Point data.root (or the DATA_ROOT "
               f"environment variable) at the folder that contains {parent_of}")
    if download_error is None:
        message += ", or set data.download=true to fetch them with torchvision."
    else:
        message += f". data.download=true was set, but the torchvision download failed: {download_error}"
    return DataError(message)
