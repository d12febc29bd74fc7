"""Local mode vs the pooled CSV, run by run: per-client names, sizes, scores, ranks, widths and
accuracies must be exactly equal; losses and round means (sums in other orders: the server averages
replies in arrival order) are compared by their largest difference.

Usage: python benchmarks/medium/local/compare.py benchmarks/medium/local benchmarks/medium/runs
"""

import json
import sys
from pathlib import Path

EXACT = ("name", "n_train", "n_test", "score", "rank", "width", "accuracy", "top3", "full_width_accuracy")


def main(local: Path, pooled: Path) -> int:
    ok = True
    for path in sorted(local.glob("*/seed-*/results.json")):
        other = pooled / path.relative_to(local)
        if not other.is_file():
            print(f"{path.relative_to(local).parent}: no pooled run to compare")
            continue
        a, b = json.loads(path.read_text()), json.loads(other.read_text())
        exact = [[c[k] for k in EXACT] for c in a["clients"]] == [[c[k] for k in EXACT] for c in b["clients"]]
        loss = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a["clients"], b["clients"]))
        rounds = max(abs(x["mean"] - y["mean"]) for x, y in zip(a["history"], b["history"]))
        ok &= exact and loss < 1e-5 and rounds < 1e-12
        print(f"{path.relative_to(local).parent}: accuracies, widths, scores {'identical' if exact else 'DIFFERENT'}; "
              f"mean {100 * a['summary']['mean']:.2f} vs {100 * b['summary']['mean']:.2f}; largest relative "
              f"test-loss difference {loss:.1e}; largest round-mean difference {rounds:.1e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
