"""`python -m lottery.tracking.urls URI PORT [RUN_ROOT]`: the MLflow UI's runs-table URL of every experiment that
the run directories under RUN_ROOT (./runs) tracked in URI; `make ui` prints them. MLflow 3's UI opens an
experiment on its GenAI overview page, so the plain experiment link does not show the runs table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lottery.tracking.protocol import IDS_FILE, runs_table_url, sqlite_path


def experiment_urls(uri: str, port: int, root: Path) -> dict[str, str]:
    """experiment name -> runs-table URL, from the tracking.json files under `root` (no mlflow import)."""
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        uri = "sqlite:///" + str(path.resolve())
    found: dict[str, str] = {}
    for ids_file in sorted(Path(root).glob(f"**/{IDS_FILE}")):
        try:
            entries = json.loads(ids_file.read_text()).get(uri, {})
        except (OSError, ValueError, AttributeError):
            continue
        for name, entry in entries.items():
            if isinstance(entry, dict) and entry.get("experiment_id"):
                found.setdefault(name, runs_table_url(uri, str(entry["experiment_id"]), port))
    return found


def main(argv: list[str]) -> int:
    uri, port = argv[0], int(argv[1])
    root = Path(argv[2]) if len(argv) > 2 else Path("runs")
    urls = experiment_urls(uri, port, root)
    for name, url in sorted(urls.items()):
        print(f"  {name}: {url}")
    if not urls:
        print(f"  (no tracked run under {root}/ yet: each tracked command prints its runs-table URL)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
