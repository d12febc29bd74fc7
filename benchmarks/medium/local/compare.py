"""Local mode vs the pooled CSV: are the runs identical? (vocabulary size, sizes, scores, widths,
every client's accuracy and every round's accuracies)

Usage: python benchmarks/medium/local/compare.py benchmarks/medium/local benchmarks/medium/runs
"""

import json
import sys
from pathlib import Path

KEYS = ("name", "n_train", "n_test", "score", "rank", "width", "accuracy", "top3", "loss", "full_width_accuracy")


def main(local: Path, pooled: Path) -> int:
    same_all = True
    for path in sorted(local.glob("*/seed-*/results.json")):
        other = pooled / path.relative_to(local)
        if not other.is_file():
            print(f"{path.relative_to(local).parent}: no pooled run to compare")
            continue
        a, b = json.loads(path.read_text()), json.loads(other.read_text())
        clients = [[c[k] for k in KEYS] for c in a["clients"]] == [[c[k] for k in KEYS] for c in b["clients"]]
        rounds = [h["mean"] for h in a["history"]] == [h["mean"] for h in b["history"]]
        same = clients and rounds and a["summary"] == b["summary"]
        same_all &= same
        print(f"{path.relative_to(local).parent}: {'identical' if same else 'DIFFERENT'} "
              f"(mean {100 * a['summary']['mean']:.2f} vs {100 * b['summary']['mean']:.2f}; "
              f"data-path {a['config']['data_path']})")
    return 0 if same_all else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
