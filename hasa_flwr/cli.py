"""The `hasa` command: run, sweep, report and benchmark hasa-flwr through the Flower CLI."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from hasa_flwr.data import DataError
from hasa_flwr.federation.config import settings_from_run_config
from hasa_flwr.study.launch import app_defaults, flwr_run, merge_config, preflight, read_preset
from hasa_flwr.study.sweep import RunFailed, SweepError, pin_paths

JOBS_HELP = ("runs at once, each on its own Ray with 1/N of the cores, i.e. 1/N of the torch threads, which changes "
             "float results: keep one value per output folder (default 1)")


def parse_overrides(items: list[str]) -> dict:
    """`--run-config` values: a preset .toml file and/or `key=value` pairs (TOML values, or strings)."""
    from hasa_flwr.study.sweep import parse_pairs

    out: dict = {}
    for item in items:
        out.update(read_preset(item) if item.endswith(".toml") else parse_pairs(item, "--run-config"))
    return out


def cmd_run(args: argparse.Namespace) -> int:
    app = Path(args.app).resolve()
    overrides = parse_overrides(args.run_config)
    if args.resume:  # the recorded run config, so the run goes on exactly as it started
        from hasa_flwr.federation.checkpoint import read_checkpoint

        folder = Path(args.resume).expanduser().absolute()
        recorded = read_checkpoint(folder).progress["run_config"]
        overrides = {**recorded, **overrides, "resume-from": str(folder)}
    config = merge_config(app_defaults(app), overrides)
    config["results-dir"] = str(Path(config["results-dir"]).expanduser().absolute())
    if args.superlink:  # deployment: the data lives on the devices, so only the run config is checked here
        settings = settings_from_run_config(config)
    else:
        settings = preflight(pin_paths(config))
    outcome = flwr_run(app, config, num_supernodes=settings.num_clients, federation_config=args.federation_config,
                       connection=args.superlink, log=sys.stdout)
    if outcome.results is None:
        why = outcome.failure
        print(f"hasa: error: {why}", file=sys.stderr)
        return 1
    print(f"results: {outcome.results}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from hasa_flwr.study.sweep import parse_seeds, parse_sets, parse_strategies, sweep

    def go(env=None):
        return sweep(Path(args.app), Path(args.out), preset=args.preset, strategies=parse_strategies(args.strategies),
                     seeds=parse_seeds(args.seeds), sets=parse_sets(args.set), federation_config=args.federation_config,
                     keep_going=args.keep_going, progress=not args.no_progress, run_timeout=args.run_timeout,
                     label=args.label, jobs=args.jobs, env=env)
    if args.shared_ray:
        if args.jobs > 1:
            raise ValueError("--shared-ray runs one run at a time (Flower sizes each run's actors from the whole "
                             "Ray, so concurrent runs on one Ray wait for each other): drop --jobs or --shared-ray")
        from hasa_flwr.study.shared_ray import shared_ray

        with shared_ray() as env:
            outcome = go(env)
    else:
        outcome = go()
    print(f"sweep: {len(outcome.done)} run(s) done, {len(outcome.skipped)} skipped (already finished), "
          f"{len(outcome.failed)} failed; results in {Path(args.out).absolute()}")
    if (timing := outcome.timing()) is not None:
        print(f"timing: {timing}")
    for key, why in outcome.failed:
        print(f"hasa: error: {key} failed: {why}", file=sys.stderr)
    if not outcome.failed:
        print(f"next: hasa report {args.out}")
    return 1 if outcome.failed else 0


def cmd_split(args: argparse.Namespace) -> int:
    from hasa_flwr.data.prepare import split_by_column

    files = split_by_column(args.file, args.client_column, args.out)
    print(f"split: {len(files)} client files in {Path(args.out).absolute()}")
    return 0


def cmd_vocab(args: argparse.Namespace) -> int:
    from hasa_flwr.data.prepare import vocab_from_files, write_vocab

    vocab = vocab_from_files(args.files, text_column=args.text_column, min_count=args.min_count, seed=args.seed,
                             test_fraction=args.test_fraction, max_title_words=args.max_title_words)
    path = write_vocab(vocab, args.out)
    print(f"vocab: {len(vocab) - 2} words (+ <pad>, <unk>) in {path.absolute()}")
    return 0


def cmd_candidates(args: argparse.Namespace) -> int:
    from hasa_flwr.data.prepare import candidate_words, write_vocab

    words = candidate_words(args.source, args.top)
    path = write_vocab(words, args.out)
    print(f"candidates: {len(words)} public words ({args.source}) in {path.absolute()}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from hasa_flwr.study.grid import read_grid, run_grid
    from hasa_flwr.study.sweep import parse_seeds

    grid = read_grid(args.grid)
    cells = [c for c in args.cells.split(",") if c] if args.cells else None
    outcome = run_grid(Path(args.app), grid, Path(args.out), seeds=parse_seeds(args.seeds) if args.seeds else None,
                       cells=cells, federation_config=args.federation_config, keep_going=args.keep_going,
                       progress=not args.no_progress, run_timeout=args.run_timeout, jobs=args.jobs)
    print(f"grid: {len(outcome.done)} run(s) done, {len(outcome.skipped)} skipped (already finished), "
          f"{len(outcome.failed)} failed; results in {Path(args.out).absolute()}")
    for key, why in outcome.failed:
        print(f"hasa: error: {key} failed: {why}", file=sys.stderr)
    return 1 if outcome.failed else 0


def cmd_allocate(args: argparse.Namespace) -> int:
    from hasa_flwr.study.dry_run import compare_allocations, markdown, write_allocations
    from hasa_flwr.study.sweep import base_config, command_line, parse_seeds, parse_sets

    config = base_config(Path(args.app), args.preset, parse_sets(args.set))
    variants: dict[str, dict] = {}
    for item in args.vary:
        name, sep, setting = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--vary '{item}' is not NAME:KEY=VALUE, e.g. --vary tokens:score-histogram=tokens")
        variants.setdefault(name.strip(), {}).update(parse_sets([setting]))
    result = compare_allocations(config, parse_seeds(args.seeds), variants)
    if args.out:
        paths = write_allocations(result, Path(args.out), command_line())
        print(paths[1].read_text(), end="")
        print(f"written: {paths[0]} {paths[1]}")
    else:
        print(markdown(result, command_line()), end="")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from hasa_flwr.study.report import write_calibration
    from hasa_flwr.study.sweep import calibrate, parse_seeds, parse_sets

    outcome = calibrate(Path(args.app), Path(args.out), preset=args.preset, seeds=parse_seeds(args.seeds),
                        sets=parse_sets(args.set), federation_config=args.federation_config,
                        keep_going=args.keep_going, progress=not args.no_progress, run_timeout=args.run_timeout,
                        jobs=args.jobs)
    for key, why in outcome.failed:
        print(f"hasa: error: {key} failed: {why}", file=sys.stderr)
    if outcome.failed:
        return 1
    from hasa_flwr.study.report import calibration_markdown

    calib = write_calibration(Path(args.out))
    print(calibration_markdown(calib))
    print(f"wrote {Path(args.out) / 'calibration.json'}, calibration.md and score_vs_need.png")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.grid or not args.folder:
        from hasa_flwr.study.grid_report import cmd_report_grid

        return cmd_report_grid(args)
    from hasa_flwr.study.report import write_report

    paths = write_report(Path(args.folder), calibration=[Path(c) for c in args.calibration],
                         out=Path(args.out) if args.out else None, compare=Path(args.compare) if args.compare else None)
    print(paths["summary.md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from hasa_flwr.study.bench import overhead
    from hasa_flwr.study.sweep import parse_sets

    overhead(Path(args.app), preset=args.preset, rounds=args.rounds, sets=parse_sets(args.set),
             num_cpus=args.num_cpus, plain_threads=args.plain_threads, repeat=args.repeat,
             keep=Path(args.keep) if args.keep else None, one_actor=args.one_actor)
    return 0


def cmd_bench_secure(args: argparse.Namespace) -> int:
    from hasa_flwr.study.launch import app_defaults, merge_config, read_preset
    from hasa_flwr.study.secure_bench import bench_secure, write_bench
    from hasa_flwr.study.sweep import parse_seeds, parse_sets

    config = merge_config(app_defaults(Path(args.app)), {**(read_preset(args.preset) if args.preset else {}),
                                                         **parse_sets(args.set)})
    result = bench_secure(config, parse_seeds(args.seeds), args.candidates)
    paths = write_bench(result, args.out)
    print(paths[1].read_text(), end="")
    print(f"written: {paths[0]} {paths[1]}")
    return 0


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from hasa_flwr.study.scale_bench import bench_scale
    from hasa_flwr.study.sweep import parse_sets

    bench_scale(Path(args.app), args.clients, rounds=args.rounds, fraction=args.fraction, sets=parse_sets(args.set),
                out=Path(args.out))
    print((Path(args.out) / "scale.md").read_text(), end="")
    return 0


def cmd_bench_deploy(args: argparse.Namespace) -> int:
    from hasa_flwr.study.deploy_bench import bench_deploy

    caps = parse_floats("--caps", args.caps, 0.0, 1.0)
    polls = parse_floats("--reply-poll", args.reply_poll, 0.01, 60.0)
    if len(caps) < 2:
        raise ValueError(f"--caps needs one width cap in (0, 1] per SuperNode, at least 2, got {args.caps!r}")
    if args.superexec_poll is not None and not 0.01 <= args.superexec_poll <= 60:
        raise ValueError(f"--superexec-poll must be 0.01-60 seconds (Flower's range), got {args.superexec_poll}")
    if args.rounds < 3:
        raise ValueError(f"--rounds must be at least 3 (rounds 2..R-1 are compared), got {args.rounds}")
    bench_deploy(Path(args.app).resolve(), rounds=args.rounds, caps=caps, reply_polls=polls,
                 superexec_poll=args.superexec_poll, out=Path(args.out).resolve())
    print((Path(args.out) / "deploy.md").read_text(), end="")
    return 0


def parse_floats(option: str, text: str, low: float, high: float) -> tuple[float, ...]:
    """Comma-separated numbers in (low, high]."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values or any(not low < v <= high for v in values):
        raise ValueError(f"{option} values must lie in ({low:g}, {high:g}], got {text!r}")
    return values


def cmd_export(args: argparse.Namespace) -> int:
    from hasa_flwr.export import ExportMismatch, export_model

    try:
        report = export_model(args.path, args.out, fmt=args.format, client=args.client, width=args.width)
    except ExportMismatch as err:  # the file was not written: exit 1 like a failed run, not a usage error
        print(f"hasa: error: {err}", file=sys.stderr)
        return 1
    print("\n".join(report.lines()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hasa_flwr.predict import predict_lines

    print("\n".join(predict_lines(args.path, args.input, client=args.client, width=args.width)))
    return 0


def cmd_bench_widths(args: argparse.Namespace) -> int:
    from hasa_flwr.study.widths_bench import DEFAULT_WIDTHS, bench_widths, markdown, parse_widths, write_bench

    widths = parse_widths(args.widths) if args.widths else list(DEFAULT_WIDTHS)
    result = bench_widths(args.run_dir, widths, repeats=args.repeats, warmup=args.warmup)
    paths = write_bench(result, args.out or args.run_dir)
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def add_model_commands(sub, bsub) -> None:
    """export, predict and bench widths: using a finished run's saved models."""
    def choose_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--client", metavar="NAME", help="a client's own subnet (default: the run's supernet)")
        p.add_argument("--width", type=float, metavar="W", help="the width-W prefix of the supernet, 0 < W <= 1")

    ex = sub.add_parser("export", help="a client's subnet or a supernet prefix as ONNX or torch.export, checked "
                        "against PyTorch on the run's test data",
                        description="Writes FILE only if ONNX Runtime (or the reloaded .pt2) matches PyTorch to "
                                    "1e-4 on the run's real test inputs; the model's metadata (vocabulary, class "
                                    "names) is stored inside the file.")
    ex.add_argument("path", metavar="RUN_DIR", help="a finished run's folder (or a saved model folder)")
    choose_model(ex)
    ex.add_argument("--format", choices=("onnx", "pt2"), default="onnx", help="onnx (default) or pt2 (torch.export)")
    ex.add_argument("--out", required=True, metavar="FILE", help="the file to write, e.g. device.onnx")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("predict", help="top-5 next words of a title start, or top-3 classes of an image",
                        description="Runs a run folder or model folder with PyTorch, an .onnx file with ONNX Runtime "
                                    "or a .pt2 file with torch.export. Text is cleaned like the titles and the word "
                                    "after its last word is predicted; an image must have the model's size and is "
                                    "scaled to [0, 1] by /255 (digits: an 8x8 grayscale PNG, digit values 0-16 "
                                    "scaled to 0-255).")
    pr.add_argument("path", metavar="FILE_OR_RUN_DIR", help="a run folder, a model folder, or an exported .onnx/.pt2")
    pr.add_argument("input", nargs="+", metavar="TEXT|IMAGE", help="the start of a title, or an image file")
    choose_model(pr)
    pr.set_defaults(func=cmd_predict)

    wi = bsub.add_parser("widths", help="parameters, MACs, ONNX size, latency and accuracy of each prefix width",
                         description="Writes widths.json, widths.md and widths.png (default: into RUN_DIR).")
    wi.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's folder (its supernet is sliced)")
    wi.add_argument("--widths", metavar="W,W,...", help="widths in (0, 1] (default: 0.2,0.4,0.6,0.8,1.0)")
    wi.add_argument("--out", metavar="DIR", help="where to write the three files (default: RUN_DIR)")
    wi.add_argument("--repeats", type=int, default=200, help="timed batch-1 runs per width (default 200)")
    wi.add_argument("--warmup", type=int, default=20, help="untimed runs before them (default 20)")
    wi.set_defaults(func=cmd_bench_widths)


def add_run_options(p: argparse.ArgumentParser, default_seeds: str) -> None:
    p.add_argument("--preset", metavar="FILE.toml", help="run-config preset, e.g. conf/medium.toml "
                   "(default: the app's pyproject defaults)")
    p.add_argument("--seeds", default=default_seeds, help=f"seeds: 0-9, 0,1,2 or 0-2,7 (default: {default_seeds})")
    p.add_argument("--out", required=True, help="output folder; re-running the same command resumes it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override on top of the preset (repeatable; TOML values)")
    p.add_argument("--app", default=".", help="the hasa-flwr app folder (default: .)")
    p.add_argument("--federation-config", default="",
                   help="passed to flwr run (default: num-supernodes=<num-clients>)")
    p.add_argument("--keep-going", action="store_true",
                   help="after a failed run, go on with the others (default: stop at the first failure)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help=JOBS_HELP)
    p.add_argument("--run-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                   help="stop a run that takes longer and count it as failed (default: no limit)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def federation_sizes(text: str) -> list[int]:
    """`--clients 10,100`: argparse then names the option in the error."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError(f"expected comma-separated federation sizes >= 2, e.g. 10,100, got {text!r}")
    return sizes


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


class Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error of the command."""

    def error(self, message: str):
        print(f"hasa: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hasa", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="check the run config, then `flwr run` it in simulation")
    run.add_argument("app", nargs="?", default=".", help="the hasa-flwr app folder (default: .)")
    run.add_argument("--run-config", action="append", default=[], metavar="FILE.toml|k=v",
                     help="preset file and/or key=value overrides (repeatable)")
    run.add_argument("--superlink", default=None, metavar="CONNECTION",
                     help="a [superlink.<name>] connection in $FLWR_HOME/config.toml (deployment); default: local "
                          "simulation")
    run.add_argument("--federation-config", default="",
                     help="passed to flwr run (default: num-supernodes=<num-clients>)")
    run.add_argument("--resume", metavar="RUN_FOLDER",
                     help="continue a stopped or crashed run from its last checkpoint (<results-dir>/<run-id>), with "
                          "its recorded run config; results.json is written there")
    run.set_defaults(func=cmd_run)

    from hasa_flwr.federation.config import STRATEGIES

    sw = sub.add_parser("sweep", help="a preset over strategies x seeds, one `flwr run` each (resumable)",
                        description="Runs <out>/<strategy>/seed-<k>/results.json sequentially through the Flower "
                                    "simulation engine; finished runs are skipped, so re-running resumes.")
    sw.add_argument("--strategies", default=",".join(STRATEGIES),
                    help=f"comma-separated (default: all: {','.join(STRATEGIES)})")
    sw.add_argument("--label", metavar="NAME",
                    help="folder name for the runs of one strategy, for an ablation beside it, e.g. "
                         "--strategies hasa --label hasa-selective --set aggregation=selective")
    add_run_options(sw, "0-9")
    sw.add_argument("--shared-ray", action="store_true",
                    help="start one local Ray (and SuperLink) for every run of the sweep instead of one per run "
                         "(~5 s less per run; one run at a time); stopped at the end")
    sw.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("split", help="one CSV per client from a pooled file (the files each device holds)")
    sp.add_argument("file", help="a .csv, .jsonl or .parquet file with a client column")
    sp.add_argument("--client-column", required=True, help="the column that names each row's client")
    sp.add_argument("--out", required=True, help="a new (or empty) folder for <client>.csv files")
    sp.set_defaults(func=cmd_split)

    vo = sub.add_parser("vocab", help="a shared vocabulary file (for run config vocab-path) from text files",
                        description="Each FILE (or each file of a FOLDER) is one client; its titles are cleaned and "
                                    "split as in a run with --seed, and the words whose pooled training count reaches "
                                    "--min-count are written one per line, most frequent first.")
    vo.add_argument("files", nargs="+", metavar="FILE|FOLDER")
    vo.add_argument("--out", required=True, help="vocabulary file to write")
    vo.add_argument("--text-column", default="title", help="column with the titles (default: title)")
    vo.add_argument("--min-count", type=int, default=2, help="pooled training count a word needs (default 2)")
    vo.add_argument("--seed", type=int, default=0, help="the run seed whose train/test split is used (default 0)")
    vo.add_argument("--test-fraction", type=float, default=0.2, help="as the run config's (default 0.2)")
    vo.add_argument("--max-title-words", type=int, default=24, help="as the run config's (default 24)")
    vo.set_defaults(func=cmd_vocab)

    ca = sub.add_parser("candidates", help="public candidate words (run config vocab-candidates) for secure-stats",
                        description="Under secure-stats the vocabulary is the candidates whose pooled training count "
                                    "(a SecAgg+ sum) reaches min-count: the server learns pooled counts of public "
                                    "words, never one client's. Every party reads the same file.")
    ca.add_argument("--out", required=True, help="word list to write (one word per line)")
    ca.add_argument("--from", dest="source", default="wordfreq", choices=("wordfreq", "synthetic"),
                    help="wordfreq: the most frequent English words (pip install wordfreq); synthetic: the built-in "
                         "synthetic language")
    ca.add_argument("--top", type=positive_int, default=50000, help="how many words (default 50000)")
    ca.set_defaults(func=cmd_candidates)

    gr = sub.add_parser("grid", help="a research map: every cell of a grid file x its arms x seeds (resumable)",
                        description="Runs <out>/<cell>/<arm>/seed-<k>/results.json, seed-major over the whole grid, "
                                    "one `flwr run` each; finished runs are skipped, so re-running resumes.")
    gr.add_argument("grid", help="grid file (TOML: preset, seeds, [fixed], [axes], [arms])")
    gr.add_argument("--out", required=True, help="output folder; re-running the same command resumes it")
    gr.add_argument("--seeds", default=None, help="seeds (default: the grid file's), e.g. 3-9 to extend cells")
    gr.add_argument("--cells", default=None, help="comma-separated cell names (default: every cell)")
    gr.add_argument("--app", default=".", help="the hasa-flwr app folder (default: .)")
    gr.add_argument("--federation-config", default="", help="passed to flwr run (default: num-supernodes=<num-clients>)")
    gr.add_argument("--keep-going", action="store_true", help="go on after a failed run and list the failures at the end")
    gr.add_argument("--no-progress", action="store_true", help="no progress bar")
    gr.add_argument("--run-timeout", type=positive_seconds, default=None, metavar="SECONDS",
                    help="stop a run that takes longer than this")
    gr.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                    help=JOBS_HELP)
    gr.set_defaults(func=cmd_grid)

    al = sub.add_parser("allocate", help="the widths a run config gives each client, from the query round alone "
                        "(no training), and how much each --vary changes them",
                        description="Runs the server's phases up to the allocation in-process (the real ClientApp on "
                                    "a loopback federation) for each seed; prints, or writes allocate.json and "
                                    "allocate.md to --out.")
    al.add_argument("--preset", default=None, metavar="FILE.toml", help="run-config preset, e.g. conf/medium.toml")
    al.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override (repeatable)")
    al.add_argument("--vary", action="append", default=[], metavar="NAME:KEY=VALUE",
                    help="a variant compared with the base config (repeatable; repeat a NAME to set more keys)")
    al.add_argument("--seeds", default="0-9", help="seeds (default 0-9)")
    al.add_argument("--out", default=None, help="folder for allocate.json and allocate.md (default: print only)")
    al.add_argument("--app", default=".", help="the hasa-flwr app folder (default: .)")
    al.set_defaults(func=cmd_allocate)

    cal = sub.add_parser("calibrate", help="score validity: uniform runs at width 1.0 and at width B, then "
                         "Spearman(score, need for width)",
                         description="Runs <out>/width-1.0/seed-<k> and <out>/width-<B>/seed-<k>, then writes "
                                     "calibration.json, calibration.md and score_vs_need.png.")
    add_run_options(cal, "0-2")
    cal.set_defaults(func=cmd_calibrate)

    rep = sub.add_parser("report", help="summary.json, summary.md and PNG plots from a sweep folder")
    rep.add_argument("folder", nargs="?", help="the --out folder of `hasa sweep`")
    rep.add_argument("--grid", metavar="DIR", help="instead of FOLDER: the --out folder of `hasa grid`; writes "
                     "grid.json, grid.md and grid_<arm>.png (each arm paired with --baseline per cell and round count)")
    rep.add_argument("--baseline", default="uniform", help="with --grid: the arm the others are paired with "
                     "(default: uniform)")
    rep.add_argument("--rounds", metavar="R,R,...", help="with --grid: round counts read from each run's history, "
                     "and 'best' for each run at its best round (default: 8,20,40 where reached, and the runs' "
                     "last round)")
    rep.add_argument("--calibration", metavar="DIR", action="append", default=[],
                     help="a `hasa calibrate` folder (adds score_vs_need.png); repeat it to put other data sets' "
                          "score validity in the same table")
    rep.add_argument("--out", help="where to write (default: the sweep folder)")
    rep.add_argument("--compare", metavar="DIR",
                     help="another sweep folder of the same preset: its strategies that FOLDER lacks join the tables "
                          "(e.g. uniform and the baselines beside an ablation folder)")
    rep.set_defaults(func=cmd_report)

    bench = sub.add_parser("bench", help="performance benchmarks")
    bsub = bench.add_subparsers(dest="bench", required=True)
    ov = bsub.add_parser("overhead", help="Flower simulation round time / the same work in a plain PyTorch loop")
    ov.add_argument("--preset", metavar="FILE.toml", help="run-config preset (e.g. conf/medium.toml)")
    ov.add_argument("--rounds", type=int, default=2,
                    help="rounds; round 1 is warm-up and excluded if > 1; with >= 3 the final round (which adds "
                         "a full-width evaluation) is excluded from the comparison too (default 2)")
    ov.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override")
    ov.add_argument("--num-cpus", type=int, default=None,
                    help="client-resources-num-cpus for Flower = torch threads of the plain loop (default 2)")
    ov.add_argument("--plain-threads", type=int, default=None,
                    help="torch threads of the plain loop (default: --num-cpus, what Ray gives each actor)")
    ov.add_argument("--one-actor", action="store_true",
                    help="give Ray only --num-cpus CPUs: one actor trains and the other cores are left to Flower's "
                         "own processes (with --num-cpus below the core count)")
    ov.add_argument("--repeat", type=int, default=1,
                    help="run the plain loop this many times and keep its fastest round (default 1)")
    ov.add_argument("--keep", metavar="DIR", help="keep the flwr log, results.json and overhead.json here")
    ov.add_argument("--app", default=".", help="the hasa-flwr app folder (default: .)")
    ov.set_defaults(func=cmd_bench)
    se = bsub.add_parser("secure", help="secure-stats vs the clear statistics, per seed (in-process, real SecAgg+)",
                         description="The vocabulary, query and score phases on an in-process federation: clear, "
                                     "secure with the clear vocabulary shared (score error, ranks, widths), and with "
                                     "--candidates secure with a vocabulary from public candidate words.")
    se.add_argument("--preset", metavar="FILE.toml", help="run-config preset (e.g. conf/medium.toml)")
    se.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override")
    se.add_argument("--seeds", default="0-9", help="seeds, e.g. 0-9 or 0,3,5 (default 0-9)")
    se.add_argument("--candidates", default="", metavar="FILE", help="public candidate words (`hasa candidates`)")
    se.add_argument("--out", required=True, help="folder for secure.json and secure.md")
    se.add_argument("--app", default=".", help="the hasa-flwr app folder (default: .)")
    se.set_defaults(func=cmd_bench_secure)
    sc = bsub.add_parser("scale", help="rounds with M clients at fraction-train f in simulation: seconds, server "
                                       "seconds, bytes, peak RSS of all processes; allocation of 10^6 clients")
    sc.add_argument("--clients", type=federation_sizes, default="10,100,300,1000",
                    help="federation sizes (default 10,100,300,1000)")
    sc.add_argument("--rounds", type=int, default=3, help="rounds per run (default 3)")
    sc.add_argument("--fraction", type=float, default=0.1, help="fraction-train (default 0.1)")
    sc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config override")
    sc.add_argument("--out", required=True, help="folder for scale.json, scale.md and the runs")
    sc.add_argument("--app", default=".", help="the hasa-flwr app folder (default: .)")
    sc.set_defaults(func=cmd_bench_scale)
    de = bsub.add_parser("deploy", help="seconds per round in a real deployment (SuperLink + SuperNodes on 127.0.0.1): "
                                        "hasa-flwr vs a no-op ClientApp (Flower's floor), and their ratio")
    de.add_argument("--rounds", type=int, default=6, help="rounds per run; rounds 2..R-1 are compared (default 6)")
    de.add_argument("--caps", default="0.8,0.5,0.3", help="one SuperNode per width cap (default 0.8,0.5,0.3)")
    de.add_argument("--reply-poll", default="0.2,3",
                    help="run config reply-poll values to compare; 3 = Flower's own interval (default 0.2,3)")
    de.add_argument("--superexec-poll", type=float, default=None, metavar="SECONDS",
                    help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL for the SuperLink and SuperNodes (default: Flower's 1 s)")
    de.add_argument("--out", required=True, help="folder for deploy.json, deploy.md and the runs' logs")
    de.add_argument("--app", default=".", help="the hasa-flwr app folder (default: .)")
    de.set_defaults(func=cmd_bench_deploy)
    add_model_commands(sub, bsub)
    return parser


def _terminated(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, a job scheduler) cleans up like Ctrl-C: Ray and SuperLink stop too


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return args.func(args)
    except RunFailed as err:
        print(f"hasa: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, DataError, FileNotFoundError, SweepError) as err:
        print(f"hasa: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hasa: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
