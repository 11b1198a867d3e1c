"""The ``torchmoo`` command line.

    torchmoo demo [--ops] [--out DIR] [--device D]
                                   Pareto exploration of a two-task LeNet (about a minute; results in DIR,
                                   default runs/pareto-multidigits-seed0); --ops: a tour of the operators
    torchmoo list                  the experiments that reproduce the papers
    torchmoo run NAME [--full] [--seed S] [--out DIR] [--device D] [--set KEY=VALUE ...]
                                   run (or resume) one experiment; results in DIR/results.json
    torchmoo report DIR [DIR ...]  markdown table of the results found under the folders
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch

import torchmoo as tm


DEMO_OUT = "runs/pareto-multidigits-seed0"


def demo(device: str = "cpu", ops: bool = False, out: str = DEMO_OUT) -> None:
    """The small ``pareto-multidigits`` experiment (seeds, Pareto expansion with MINRES, the continuous
    front) in the folder ``out`` (resumed if it holds the demo), then where its figure is; with ``ops``,
    the tour of the operators instead."""
    from torchmoo.experiments.runner import check_device

    check_device(device)
    if ops:
        return operator_tour(device)
    from torchmoo import experiments

    print(f"torchmoo {tm.__version__}: Pareto exploration of a two-task LeNet on MultiDigits (results in {out}/)")
    res = experiments.run_experiment("pareto-multidigits", out=out, device=device)
    print(experiments.runner.markdown_table(res["summary"]["table"]))
    print(experiments.runner.markdown_table(res["summary"]["necessity"]))
    print(f"\nfigure: {res['summary']['figure']}\nresults: {out}/results.json")


def operator_tour(device: str = "cpu") -> None:
    """MGDA's common descent direction for three conflicting gradients, then a batched PNG dual."""
    torch.manual_seed(0)
    dev = torch.device(device)
    print(f"torchmoo {tm.__version__} on {dev} (CUDA kernels built: {tm.cuda_built})\n")

    # Three task gradients of a 1000-parameter model, two of them conflicting.
    J = torch.randn(3, 1000, dtype=torch.float64, device=dev)
    J[1] = -0.8 * J[0] + 0.6 * torch.randn(1000, dtype=torch.float64, device=dev)
    w, info = tm.ops.min_norm_simplex(J @ J.T, return_info=True)
    d = J.T @ w
    print("MGDA weights w            :", [round(v, 4) for v in w.tolist()])
    print("KKT residual              :", f"{info.kkt_residual.item():.1e}")
    print("<g_i, d> for each task    :", [round(v, 3) for v in (J @ d).tolist()])
    print("|d|^2 (each <g_i,d> >= it):", round(float(d @ d), 3), "\n")

    # A batch of PNG dual problems (Ye & Liu, Eq. 10): G = J J', c = J grad_F - phi 1.
    B, m, n = 4096, 4, 256
    Jb = torch.randn(B, m, n, dtype=torch.float64, device=dev)
    grad_F = torch.randn(B, n, dtype=torch.float64, device=dev)
    phi = 0.5
    G = Jb @ Jb.mT
    c = (Jb @ grad_F.unsqueeze(-1)).squeeze(-1) - phi
    start = time.perf_counter()
    lam, info = tm.ops.nonneg_qp(G, c, return_info=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    v = grad_F + (Jb.mT @ lam.unsqueeze(-1)).squeeze(-1)
    slack = (Jb @ v.unsqueeze(-1)).squeeze(-1) - phi  # primal constraint <g_i, v> >= phi
    print(f"{B} PNG dual problems (m={m}) solved in {elapsed * 1e3:.1f} ms")
    print("max KKT residual          :", f"{info.kkt_residual.max().item():.1e}")
    print("min over i of <g_i,v> - phi:", f"{slack.min().item():.1e}  (>= 0 up to round-off)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="torchmoo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="Pareto exploration of a two-task LeNet (--ops: a tour of the operators)")
    p_demo.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p_demo.add_argument("--ops", action="store_true", help="a short tour of the operators instead")
    p_demo.add_argument("--out", default=DEMO_OUT, help=f"result folder (default {DEMO_OUT}); resumed if it exists")
    sub.add_parser("list", help="list the experiments")
    p_run = sub.add_parser("run", help="run or resume an experiment")
    p_run.add_argument("name", help="experiment name (see `torchmoo list`)")
    p_run.add_argument("--full", action="store_true", help="the paper's full setting instead of the small default")
    p_run.add_argument("--seed", type=int, default=0, help="seed of every random stream (default 0)")
    p_run.add_argument("--out", default=None, help="result folder (default runs/NAME-seedS[-full]); resumed if it exists")
    p_run.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p_run.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one field of the config (repeatable), e.g. --set epochs=2 --set weights=0.2,0.8 "
        "--set data=/data/sarcos",
    )
    p_report = sub.add_parser("report", help="markdown table of results")
    p_report.add_argument("paths", nargs="+", help="result folders (searched recursively) or results.json files")
    args = parser.parse_args(argv)
    try:
        _command(args)
    except (ValueError, OSError) as err:  # bad arguments, a missing data path, an unwritable folder
        print(f"torchmoo {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = {"run": getattr(args, "out", None), "demo": None if getattr(args, "ops", True) else args.out}.get(args.command)
        if args.command == "run" and out is None:
            from torchmoo.experiments.runner import default_out

            out = default_out(args.name, args.seed, args.full)
        if out is None:
            hint = ""
        elif (Path(out) / "results.json").exists():
            hint = (
                f" The finished units are kept in {out}/results.json and the unit in progress resumes from its last "
                "checkpoint: rerun the same command to continue."
            )
        else:  # stopped before the first unit checkpointed: the runner kept no results file
            hint = " Nothing had been computed yet: rerun the same command to start again."
        print(f"\ntorchmoo {args.command}: interrupted.{hint}", file=sys.stderr)
        return 130
    return 0


def _command(args: argparse.Namespace) -> None:
    if args.command == "demo":
        demo(args.device, ops=args.ops, out=args.out)
        return
    from torchmoo import experiments

    if args.command == "list":
        for name in experiments.experiment_names():
            print(f"{name:28s} {experiments.get_experiment(name).description}")
    elif args.command == "run":
        config = experiments.runner.configure(args.name, full=args.full, assignments=args.set)
        res = experiments.run_experiment(
            args.name,
            full=args.full,
            seed=args.seed,
            out=args.out,
            device=args.device,
            progress=not args.no_progress,
            config=config,
        )
        out = args.out or experiments.runner.default_out(args.name, args.seed, args.full)
        print(experiments.runner.markdown_table(res["summary"].get("table", [])))
        print(f"\nresults: {out}/results.json")
    elif args.command == "report":
        print(experiments.report(args.paths), end="")


if __name__ == "__main__":
    sys.exit(main())
