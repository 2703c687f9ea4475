"""Benchmarks of triton_nsr against the paper's NSR formulation, and the performance report.

Without a subcommand: on a CUDA machine, check the kernels, run the full suite (W1-W4 in every
precision and layout, the sweeps and the end-to-end jobs), store the JSON and render its report in
--output-dir (bench/results/local/, ignored by git). Without CUDA (about 2 minutes on a 2-core
CPU): run the CPU suite (the paper's layer, the default layer and a static conv timed side by side,
and their peak memory; see `cpu`), store its JSON, check the kernels in the Triton interpreter on
one tiny case (in a child process, so the timing saw what backend='auto' means to a user), print
the analytic cost table, and render the report there from the newest GPU run and this CPU run.
`report` renders the committed docs/performance.md and the README's speed table from committed runs
only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from bench import (
    checks,
    cpu_cases,
    cpu_report,
    cpu_suite,
    hardware,
    harness,
    plots,
    providers,
    readme,
    report,
    results,
)
from bench.costs import BYTES_COLUMNS, bytes_table, cost_legend, cost_table, kernel_bytes_table
from bench.workloads import FORWARD, FORWARD_BACKWARD, main_workloads, select

FULL_SUITE = ["main", "sweeps", "e2e"]
# On CPU the harness can only smoke-test: tiny shapes, the plain-PyTorch providers.
CPU_WORKLOADS = ["tiny"]
CPU_PROVIDERS = ["paper", "static_conv"]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _needs_interpreter_child() -> bool:
    """Whether a command that launches Triton kernels must rerun itself in a child process.

    Without CUDA the kernels run in Triton's CPU interpreter, which Triton reads from
    TRITON_INTERPRET when it is imported, and importing triton_nsr already imports triton
    (through torch._dynamo). So unless the variable was set before this process started, the
    command reruns in a child that has it (`python -m bench` itself keeps backend='auto'
    meaning the torch backend for its CPU timing).
    """
    return not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


def _run_in_interpreter(argv: list[str], interpret: bool = True) -> int:
    """``python -m bench ARGV`` in a child process with TRITON_INTERPRET=1 (or, with
    ``interpret`` False, without it: Triton compiling); its exit status."""
    sys.stdout.flush()
    sys.stderr.flush()
    path = os.pathsep.join(p for p in (str(results.REPO_ROOT), os.environ.get("PYTHONPATH"))
                           if p)
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-m", "bench", *argv], env=env,
                          check=False).returncode


def _repo_relative(path: Path) -> Path:
    try:
        return Path(path).resolve().relative_to(results.REPO_ROOT)
    except ValueError:
        return Path(path)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option and the value on failure)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results-dir", type=Path, default=results.RESULTS_DIR,
                        help="where the committed runs are looked up for the report "
                             "(default: bench/results)")
    parser.add_argument("--output-dir", type=Path, default=results.LOCAL_DIR,
                        help="where a measuring command writes its JSON and the page rendered "
                             "from it (default: bench/results/local, ignored by git)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="measure workloads and store one JSON file",
        description="Measure workloads with providers; write one JSON file per run.")
    run.add_argument("--device", choices=["cuda", "cpu"], default=_default_device(),
                     help="cuda (default when available) or cpu (timing smoke test with "
                          "time.perf_counter; tiny shapes only)")
    run.add_argument("--workloads", nargs="+", default=None, metavar="NAME",
                     help="workload names or groups: main, sweeps, e2e, W1..W4, W1-expand, "
                          "W1-reduce, sweep-batch, sweep-resolution, sweep-k, sweep-channels, "
                          "E2E-train, E2E-eval, tiny (default: main sweeps e2e on cuda, "
                          "tiny on cpu)")
    run.add_argument("--providers", nargs="+", default=None, choices=list(providers.PROVIDERS),
                     metavar="NAME",
                     help=f"providers from {list(providers.PROVIDERS)} (default: all on cuda, "
                          f"{' '.join(CPU_PROVIDERS)} on cpu)")
    run.add_argument("--precisions", nargs="+", default=None, choices=list(hardware.PRECISIONS),
                     help="fp32 (TF32 off), tf32 (float32 storage, TF32 math), bf16; the first "
                          "is the headline for sweeps, end-to-end jobs and charts "
                          "(default: tf32 fp32 bf16 on cuda, fp32 on cpu)")
    run.add_argument("--layouts", nargs="+", default=None,
                     choices=list(harness.LAYOUTS),
                     help="memory layouts; the first is the headline (default: nchw "
                          "channels_last on cuda, nchw on cpu)")
    run.add_argument("--passes", nargs="+", default=[FORWARD, FORWARD_BACKWARD],
                     choices=[FORWARD, FORWARD_BACKWARD], help="what to time (default: both)")
    run.add_argument("--repeats", type=positive_int, default=None,
                     help="timed repeats per measurement (default: 30 on cuda, 3 on cpu)")
    run.add_argument("--warmup", type=non_negative_int, default=None,
                     help="untimed calls first, for compiling and autotuning "
                          "(default: 5 on cuda, 1 on cpu)")
    run.add_argument("--output", type=Path, default=None,
                     help="JSON path (default: <output-dir>/<date>_<device>_<commit>.json)")
    run.add_argument("--no-check", action="store_true",
                     help="skip the kernel check against the reference before measuring")
    run.add_argument("--report", action="store_true",
                     help="render <output-dir>/performance.md from this run afterwards "
                          "(cuda runs only)")

    rep = commands.add_parser(
        "report", help="render docs/performance.md and charts from stored JSON",
        description="Render the report from one stored run (never measures).")
    rep.add_argument("--input", type=Path, default=None,
                     help="run JSON (default: the newest cuda run in --results-dir)")
    rep.add_argument("--markdown", type=Path, default=report.DEFAULT_MARKDOWN,
                     help="page to write (default: docs/performance.md)")
    rep.add_argument("--images", type=Path, default=report.DEFAULT_IMAGES,
                     help="chart directory (default: docs/images)")
    rep.add_argument("--no-charts", action="store_true",
                     help="tables only (no matplotlib needed)")

    lease = commands.add_parser(
        "lease", help="a short GPU lease: priority-ordered steps, stored as they happen",
        description="Run the lease's steps (bench/gpu/lease.py, planned in bench/gpu/plan.py) "
                    "within a time budget, writing lease.json after every measurement.")
    lease.add_argument("--budget-s", type=float, default=480.0,
                       help="seconds the whole lease may take (default: 480)")
    lease.add_argument("--output-dir", type=Path, default=None,
                       help="folder for lease.json, lease.log, tuned_configs.json and "
                            "performance.md (required unless --dry-run)")
    lease.add_argument("--dry-run", action="store_true",
                       help="print the plan (steps, cases, expected compiles and autotune "
                            "benchmarks, estimated seconds against the budget); measure nothing")
    lease.add_argument("--tiny", action="store_true",
                       help="interpreter-sized shapes: a CPU rehearsal of the lease itself")

    check = commands.add_parser("check", help="compare the Triton kernels with the reference "
                                              "on one tiny case (interpreter without CUDA)")
    check.add_argument("--device", choices=["cuda", "cpu"], default=_default_device())
    host = commands.add_parser(
        "host-time", help="host microseconds per layer call, down to the kernel launcher",
        description="Median host time of NSRConv2d on the triton path, forward and "
                    "forward+backward, with Triton's JIT compiling for sm_90 and only the "
                    "kernel launcher stood in for, beside a no-op layer's; counts per call.")
    host.add_argument("--repeats", type=int, default=2000, help="timed calls (default: 2000)")
    host.add_argument("--json", type=Path, help="also write the measurements here")
    commands.add_parser("costs", help="print the analytic params/FLOPs/bytes table of W1-W4 and "
                                      "the HBM bytes model of the triton path")

    cpu = commands.add_parser(
        "cpu", help="time the paper's layer, the default layer and a static conv on this CPU",
        description="The CPU suite: W1-expand, W1-reduce, W2 (forward, forward+backward) and "
                    "a WDSR-NSR training step, three providers timed in interleaved rounds, "
                    "with peak memory; stores one JSON file and re-renders the report.")
    cpu.add_argument("--threads", type=int, default=torch.get_num_threads(),
                     help="torch threads for the whole run (default: torch's default, "
                          f"{torch.get_num_threads()} here)")
    cpu.add_argument("--budget", type=float, default=cpu_suite.CpuSettings.budget_s,
                     help="seconds of timed rounds per layer measurement (default: "
                          "%(default)s)")
    cpu.add_argument("--train-budget", type=float,
                     default=cpu_suite.CpuSettings.train_budget_s,
                     help="seconds of timed rounds for the training step (default: "
                          "%(default)s)")
    cpu.add_argument("--min-rounds", type=int, default=cpu_suite.CpuSettings.min_rounds,
                     help="rounds timed even past the budget (default: %(default)s)")
    cpu.add_argument("--no-memory", action="store_true", help="skip the peak-memory child")
    cpu.add_argument("--output", type=Path, default=None,
                     help="JSON path (default: <output-dir>/<date>_cpu-suite_<commit>.json)")
    cpu.add_argument("--no-report", action="store_true",
                     help="do not render <output-dir>/performance.md afterwards")
    return parser


def _kernel_check(device: str) -> list[checks.CheckResult]:
    where = "CUDA" if device == "cuda" else "the Triton interpreter (CPU)"
    _progress(f"checking the Triton kernels against the reference in {where} "
              f"({checks.CHECK_WORKLOAD.description})")
    outcome = checks.check_kernels(device)
    print("kernel check:")
    for result in outcome:
        print(result.line())
    return outcome


def _failed(outcome: list[checks.CheckResult]) -> int:
    return int(any(result.status == "failed" for result in outcome))


def command_check(device: str) -> int:
    """Print the kernel check; 1 if a kernel disagrees with the reference, else 0."""
    return _failed(_kernel_check(device))


def command_costs() -> int:
    workloads = main_workloads()
    print("analytic cost per layer (triton_nsr.flops; forward, float32):")
    print(cost_table(workloads))
    print()
    print(cost_legend(workloads))
    print()
    print("HBM bytes the triton path moves per layer and pass (bfloat16 activations, float32 "
          "parameters):")
    print(bytes_table(workloads))
    print()
    print("\n".join(f"- `{name}`: {meaning}" for name, meaning in BYTES_COLUMNS.items()))
    print()
    print("MB per kernel (forward+backward; W3 forward only; channels_last input), each "
          "kernel's share of `moved MB`:")
    print(kernel_bytes_table(workloads))
    return 0


def command_run(args: argparse.Namespace) -> tuple[int, Path]:
    """Check the kernels, measure, write the JSON (with the check in it); (status, path)."""
    on_cuda = args.device == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    try:
        layers, jobs = select(args.workloads or (FULL_SUITE if on_cuda else CPU_WORKLOADS))
        settings = harness.Settings(
            device=args.device,
            precisions=args.precisions or (["tf32", "fp32", "bf16"] if on_cuda else ["fp32"]),
            layouts=args.layouts or (list(harness.LAYOUTS) if on_cuda else ["nchw"]),
            providers=args.providers or (list(providers.PROVIDERS) if on_cuda
                                         else CPU_PROVIDERS),
            passes=args.passes,
            repeats=args.repeats if args.repeats is not None else (30 if on_cuda else 3),
            warmup=args.warmup if args.warmup is not None else (5 if on_cuda else 1),
        )
        settings.check()
    except ValueError as error:
        raise SystemExit(f"python -m bench run: {error}") from None
    outcome = [] if args.no_check else _kernel_check(args.device)
    run = harness.Harness(settings, _progress).run(layers, jobs)
    run["kernel_check"] = [asdict(result) for result in outcome]
    path = results.write(run, args.output or results.default_path(run, args.output_dir))
    _progress(f"wrote {path}")
    return _failed(outcome), path


def command_cpu(args: argparse.Namespace) -> Path:
    """Run the CPU suite, print its tables, store its JSON; the path written."""
    settings = cpu_suite.CpuSettings(
        threads=args.threads, min_rounds=args.min_rounds, budget_s=args.budget,
        train_budget_s=args.train_budget, measure_memory=not args.no_memory)
    try:
        settings.check()
        record = cpu_suite.run(cpu_cases.default_cases(), settings, _progress)
    except (ValueError, RuntimeError) as error:
        raise SystemExit(f"python -m bench cpu: {error}") from None
    path = cpu_suite.write(record, args.output or cpu_suite.default_path(record,
                                                                          args.output_dir))
    print(f"CPU suite ({record['environment']['cpu_model']}, "
          f"{record['environment']['torch_threads']} threads):")
    print(cpu_report.timing_table(record))
    if record["memory"]:
        print("peak memory above the idle process (MiB):")
        print(cpu_report.memory_table(record))
    print(cpu_report.summary(record))
    _progress(f"wrote {path}")
    return path


def _cpu_section(results_dir: Path, markdown: Path, images: Path | None,
                 cpu_path: Path | None = None) -> str | None:
    """The report's CPU section from the CPU-suite run at ``cpu_path``, else the newest one
    stored in ``results_dir`` (without its chart when ``images`` is None), or None."""
    found = ((cpu_path, cpu_suite.load(cpu_path)) if cpu_path is not None
             else cpu_suite.newest(results_dir))
    if found is None:
        return None
    path, record = found
    print(f"report: CPU section from {_repo_relative(path)} "
          f"({record['environment']['cpu_model']}, {record['created_utc']})")
    return cpu_report.section(record, _repo_relative(path), markdown, images)


def command_report(input_path: Path | None, results_dir: Path, markdown: Path,
                   images: Path | None, cpu_path: Path | None = None) -> int:
    """Render ``markdown`` (and charts under ``images``) from the GPU run at ``input_path``,
    else the newest committed one, and the CPU-suite run at ``cpu_path``, else the newest
    committed one."""
    if input_path is not None:
        found = (input_path, results.load(input_path))
    else:
        found = results.newest(results_dir, "cuda")
    cpu_section = _cpu_section(results_dir, markdown, images, cpu_path)
    if found is None:
        page = report.render_without_results(_repo_relative(results_dir), markdown,
                                             cpu_section)
        print(f"report: no GPU results stored in {_repo_relative(results_dir)}; wrote {page} "
              "without GPU measurements")
        return 0
    path, run = found
    env = run["environment"]
    page = report.render(run, _repo_relative(path), markdown, images, cpu_section)
    print(f"report: rendered {page} from {_repo_relative(path)} "
          f"({env['device_name']}, {run['created_utc']}, commit {env['git_commit'][:12]})")
    if Path(markdown).resolve() == report.DEFAULT_MARKDOWN.resolve():
        # The committed report: the README's speed table follows the same run.
        print(f"report: README speed table from {_repo_relative(path)}: "
              f"{readme.update(run, str(_repo_relative(path)))}")
    return 0


def command_lease(args: argparse.Namespace) -> int:
    """Run (or with --dry-run, plan) a lease; 1 when a smoke case or a step failed."""
    from bench.gpu import lease, plan
    from triton_nsr.kernels import tuned_configs

    scale = plan.Scale.tiny() if args.tiny else plan.Scale.full()
    device = _default_device()
    if args.budget_s <= 0:
        raise SystemExit(f"python -m bench lease: --budget-s must be positive, got "
                         f"{args.budget_s}")
    if args.dry_run:
        target = tuned_configs.Target.here() if device == "cuda" else plan.TARGET
        text, fits = plan.format_plan(scale, args.budget_s, device, target,
                                      tuned_configs.load_table())
        print(text)
        return 0 if fits else 1
    if args.output_dir is None:
        raise SystemExit("python -m bench lease: --output-dir is required (or use --dry-run)")
    if device != "cuda" and not args.tiny:
        raise SystemExit("python -m bench lease: no CUDA device here; --tiny rehearses the "
                         "lease in the Triton interpreter, --dry-run prints its plan")
    run = lease.Lease(scale, args.budget_s, args.output_dir, device).run()
    return int(lease.failed(run))


def command_host_time(repeats: int, json_path: Path | None) -> int:
    from bench.gpu.host_time import HOST_SHAPE, host_time, host_time_table

    result = host_time(repeats)
    print(f"host time per layer call ({HOST_SHAPE['in_channels']} -> "
          f"{HOST_SHAPE['out_channels']} channels, k={HOST_SHAPE['k']}, d={HOST_SHAPE['d']}; "
          f"Triton {result['triton']} compiling for sm_90, only the launcher stood in; "
          f"median of {repeats} calls, interleaved with a no-op layer's):")
    print(host_time_table(result))
    print("target: the issue's (forward 40 us, forward+backward 120 us beside a no-op layer "
          "of 8 and 62 us), scaled by this machine's no-op layer")
    if json_path is not None:
        json_path.write_text(json.dumps({**result, "environment": results.environment("cpu")},
                                        indent=1) + "\n")
        print(f"wrote {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.command in ("lease", "check", "run") and _needs_interpreter_child():
        return _run_in_interpreter(argv)
    if args.command == "host-time" and os.environ.get("TRITON_INTERPRET") == "1":
        return _run_in_interpreter(argv, interpret=False)
    if args.command == "lease":
        return command_lease(args)
    if args.command == "check":
        return command_check(args.device)
    if args.command == "costs":
        return command_costs()
    if args.command == "host-time":
        return command_host_time(args.repeats, args.json)
    if args.command == "report":
        try:
            return command_report(args.input, args.results_dir, args.markdown,
                                  None if args.no_charts else args.images)
        except plots.MissingMatplotlibError as error:
            raise SystemExit(f"python -m bench report: {error}") from None
    if args.command == "cpu":
        path = command_cpu(args)
        if not args.no_report:
            _local_report(args.results_dir, args.output_dir, cpu_path=path)
        return 0
    if args.command == "run":
        status, path = command_run(args)
        if args.report and args.device == "cuda":
            _local_report(args.results_dir, args.output_dir, gpu_path=path)
        return status
    # No subcommand: the main job (`make bench`).
    dirs = ["--results-dir", str(args.results_dir), "--output-dir", str(args.output_dir)]
    if torch.cuda.is_available():
        return main([*dirs, "run", "--report"])
    path = command_cpu(build_parser().parse_args([*dirs, "cpu"]))
    # The kernel check runs in a child, in the interpreter: here backend='auto' keeps meaning
    # the torch backend, as it did for the timing above.
    status = _run_in_interpreter(["check", "--device", "cpu"])
    command_costs()
    _local_report(args.results_dir, args.output_dir, cpu_path=path)
    return status


def _local_report(results_dir: Path, output_dir: Path, gpu_path: Path | None = None,
                  cpu_path: Path | None = None) -> Path:
    """The page of a user's run, beside its JSON in ``output_dir`` (the committed
    docs/performance.md is left alone: `make report` renders it from committed runs)."""
    markdown = Path(output_dir) / "performance.md"
    command_report(gpu_path, results_dir, markdown, Path(output_dir) / "images", cpu_path)
    print(f"your run's report: {_repo_relative(markdown)} (docs/performance.md, the committed "
          "report, is rendered from the committed runs by `make report`)")
    return markdown
