"""Missing files: torchvision's download (data.download, on by default) and the error that explains what to do.

torchvision fetches the public datasets (MNIST, Fashion-MNIST, CIFAR-10/100) from the mirror URLs its dataset
classes hold as class attributes, and checks each archive's md5. One process downloads at a time into a
folder (under torchrun every rank loads the data): the others wait for it, then find the files present.
"""
from __future__ import annotations

import logging
from pathlib import Path

from lottery.data.dataset import DataError
from lottery.run.locks import FileLock

logger = logging.getLogger(__name__)
LOCK_NAME = ".lottery-download.lock"


def torchvision_download(class_name: str, root: Path) -> str | None:
    """Let torchvision.datasets.<class_name> download into root; a one-line error text, or None on success."""
    import torchvision

    dataset_class = getattr(torchvision.datasets, class_name)
    sources = getattr(dataset_class, "mirrors", None) or [getattr(dataset_class, "url", "?")]
    try:
        root.mkdir(parents=True, exist_ok=True)
        with FileLock(root / LOCK_NAME, what=f"the download into {root}"):
            logger.info("%s: downloading into %s (data.download=false turns this off)", class_name, root)
            dataset_class(str(root), train=True, download=True)
    except Exception as error:  # network, disk, checksum: all end in the same DataError
        text = " ".join(f"{type(error).__name__}: {error}".split())
        return text if any(source in text for source in sources) else f"{text} (from {', '.join(sources)})"
    return None


def missing_files_error(name: str, folder: Path, missing: list[str], parent_of: str, download_error: str | None) -> DataError:
    """A DataError naming the absent files and where they were expected, with the remedies."""
    message = (f"{name}: missing files in {folder}: {', '.join(missing)}. Put them there, or point data.root (or "
               f"the DATA_ROOT environment variable) at the folder that contains {parent_of}")
    if download_error is None:
        message += ", or set data.download=true to fetch them with torchvision."
    else:
        message += f". The torchvision download (data.download=true) failed: {download_error}"
    return DataError(message)
