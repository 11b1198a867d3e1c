#!/usr/bin/env python
"""Full-size benchmark report for torchmoo: one process, interleaved timeit-style medians, markdown out.

    python bench/report.py                 # full size, prints the markdown that goes to bench/RESULTS.md
    python bench/report.py --quick         # tiny sizes (seconds), to check that the script runs
    python bench/report.py --json out.json # also dump every number

Every comparison of a table is measured in this one process, with the repeats of the contenders
interleaved round-robin (a, b, c, a, b, c, ...), and reported as the median over the repeats. A call
shorter than 20 ms is timed as a block of about 20 ms of back-to-back calls, after one untimed call
(so a multi-threaded call is not charged for waking its thread pool after a long single-threaded
contender ran: steady-state throughput, as ``timeit`` measures it). The
"x torchmoo" column is (contender's median time per problem) / (torchmoo's median time per problem)
from the same run: above 1 means torchmoo is faster. Absolute times are listed only to read the
ratios; compare them across runs or machines at your own risk.

Contenders and what one timed call includes:

* ``torchmoo``: ``tm.ops.min_norm_simplex(G)`` / ``tm.ops.nonneg_qp(G, c)`` on the whole float64 CPU
  batch (validation, dispatch, allocation of the output included), with torch's default thread
  count; ``torchmoo, 1 thread`` is the same call under ``torch.set_num_threads(1)``.
* ``quadprog loop``: a Python loop of ``quadprog.solve_qp`` over the problems, with every input
  (ridged ``G``, ``a``, constraint matrix, ``b``) prebuilt outside the timing: the best case for quadprog.
* ``sener_koltun loop``: a Python loop of ``baselines.MinNormSolver.find_min_norm_element``, the
  numpy port of MGDA-UB's solver (Frank-Wolfe/projected-gradient, MAX_ITER 250, STOP_CRIT 1e-5).
* ``reference loop``: ``torchmoo.reference.min_norm_simplex_reference`` (support enumeration).
* ``torchjd``: ``torchjd.aggregation.MGDAWeighting()(G)`` (weights from the Gramian) and
  ``MGDA()(J)`` (Jacobian to direction), default ``epsilon=1e-3, max_iters=100``.

The run also measures how much CPU other processes used (1 s before, and during the run) and warns
when it is above 5%: on a 2-core machine one busy core stalls torchmoo's 2-thread parallel regions.
``--wait-quiet 300`` waits for a quiet machine first.

The loops are slow, so for large batches they are timed on a prefix of the batch (the "timed"
column) and reported per problem; the KKT residuals are over the problems each contender solved.

Every contender's output is checked before it is timed, and the report stops on a wrong one
(``baselines.check_qp_solution``): the exact solvers (torchmoo's active set, quadprog, the reference)
must reach a KKT residual of ``EXACT_KKT`` on the original problem, the approximate ones (Frank-Wolfe,
Sener & Koltun, torchjd) a feasible point within ``GAP_TOL`` of the exact objective (and, over a batch,
``GAP_MEDIAN_TOL`` in the median); the Stein operators' outputs must be within 1e-4 of the float64 result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torchmoo as tm  # noqa: E402
from torchmoo.reference import min_norm_simplex_reference  # noqa: E402

from baselines import (  # noqa: E402
    EXACT_KKT,
    GAP_MEDIAN_TOL,
    GAP_TOL,
    check_qp_solution,
    direction_weights,
    MinNormSolver,
    QuadprogNonneg,
    QuadprogSimplex,
    interleaved_medians,
    machine_description,
    other_cpu_load,
    OtherLoadMeter,
    make_gram,
    make_jacobian,
    make_nonneg_problems,
    sener_koltun_loop,
)

try:
    import quadprog  # noqa: F401

    HAVE_QUADPROG = True
except ImportError:
    HAVE_QUADPROG = False
try:
    import torchjd.aggregation as tjd
except ImportError:
    tjd = None


def one_thread(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def calibrated_number(fn: Callable[[], object], target_s: float = 0.02,
                      sync: Optional[Callable[[], None]] = None) -> int:
    """How many back-to-back calls of ``fn`` take about ``target_s`` (for microsecond calls). ``sync``: wait for
    the device after each call, so that asynchronous launches are not counted as finished work."""
    fn()
    if sync is not None:  # the untimed call's device work must not be charged to the first counted call
        sync()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < target_s / 4:
        fn()
        if sync is not None:
            sync()
        n += 1
    return max(1, 4 * n)


class Section:
    """One table: contenders measured side by side; ratios against ``torchmoo``."""

    def __init__(self, title: str, note: str = "", baseline: str = "torchmoo", residual_label: str = "KKT"):
        self.title, self.note, self.baseline = title, note, baseline
        self.residual_label = residual_label  # what the residual columns hold
        self.fns: Dict[str, Callable[[], object]] = {}
        self.count: Dict[str, int] = {}
        self.number: Dict[str, int] = {}
        self.residual: Dict[str, Callable[[object], torch.Tensor]] = {}
        self.rows: List[dict] = []

    def add(self, name: str, fn: Callable[[], object], count: int, residual: Callable[[object], torch.Tensor]) -> None:
        """``residual(out)``: the residuals of the output (asserting that it is right: a wrong output stops the run)."""
        self.fns[name], self.count[name], self.residual[name] = fn, count, residual

    def run(self, repeats: int, sync: Optional[Callable[[], None]] = None) -> "Section":
        """Warm up, compute residuals, then time. Calls under 20 ms are timed in blocks of ~20 ms of
        back-to-back calls, each block preceded by one untimed call (see ``interleaved_medians``)."""
        kkt, rewarm = {}, []
        for name, fn in self.fns.items():
            fn()
            if sync is not None:  # the warm-up call's device work must not count as the checked call's
                sync()
            t0 = time.perf_counter()
            out = fn()
            if sync is not None:
                sync()
            if time.perf_counter() - t0 < 0.02:
                self.number[name] = calibrated_number(fn, sync=sync)
                rewarm.append(name)
            try:
                kkt[name] = self.residual[name](out)
            except AssertionError as e:
                raise AssertionError(f"{self.title}: {name}: {e}") from None
        med = interleaved_medians(self.fns, repeats, self.number, warmup=0, sync=sync, rewarm=rewarm)
        base = med[self.baseline] / self.count[self.baseline]
        for name in self.fns:
            per = med[name] / self.count[name]
            k = kkt[name].double().flatten()
            self.rows.append({
                "contender": name, "timed_problems": self.count[name], "per_problem_s": per,
                "ratio": per / base, "kkt_median": float(k.median()), "kkt_max": float(k.max()),
            })
        return self

    def row(self, name: str) -> dict:
        return next(r for r in self.rows if r["contender"] == name)

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        lab = self.residual_label
        out += [f"| contender | timed problems | time / problem | x {self.baseline} | {lab} median | {lab} max |",
                "|---|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            ratio = "1 (baseline)" if r["contender"] == self.baseline else f"{r['ratio']:.3g}"
            out.append(f"| {r['contender']} | {r['timed_problems']} | {fmt_time(r['per_problem_s'])} | {ratio} "
                       f"| {r['kkt_median']:.1e} | {r['kkt_max']:.1e} |")
        return "\n".join(out) + "\n"


def fmt_time(s: float) -> str:
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    if s >= 1e-6:
        return f"{s * 1e6:.3g} us"
    return f"{s * 1e9:.3g} ns"


def qp_res(G: torch.Tensor, c: Optional[torch.Tensor] = None, x_exact: Optional[torch.Tensor] = None, *,
           simplex: bool = True, kkt_tol: Optional[float] = None, gap_tol: Optional[float] = None,
           feas_tol: float = 1e-9) -> Callable[[object], torch.Tensor]:
    """KKT residuals of an output for the problems ``(G, c)`` (a batch output may cover a prefix of them),
    asserting ``kkt_tol`` (exact solvers) or a feasible point within ``gap_tol`` of ``x_exact`` (approximate)."""

    def res(x):
        x = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.cpu()
        n = x.shape[0] if G.dim() == 3 else None  # the loops solve a prefix of the batch
        Gs, cs, xs = (G, c, x_exact) if n is None else (
            G[:n], None if c is None else c[:n], None if x_exact is None else x_exact[:n])
        return check_qp_solution("output", Gs, cs, x, xs, simplex=simplex, kkt_tol=kkt_tol, gap_tol=gap_tol,
                                 gap_median_tol=GAP_MEDIAN_TOL if gap_tol is not None and n is not None else None,
                                 feas_tol=feas_tol)

    return res


def batched_section(title: str, B: int, m: int, n_loop: int, n_ref: int, repeats: int, norm_spread: float = 0.0,
                    note: str = "") -> Section:
    G = make_gram(B, m, 20, seed=m, norm_spread=norm_spread)
    sec = Section(title, note)
    full = tm.ops.min_norm_simplex(G)  # checked as the "torchmoo" contender's output
    res = qp_res(G, kkt_tol=EXACT_KKT)
    sec.add("torchmoo", lambda: tm.ops.min_norm_simplex(G), B, res)
    sec.add("torchmoo, 1 thread", one_thread(lambda: tm.ops.min_norm_simplex(G)), B, res)
    sec.add("torchmoo method=frank_wolfe", lambda: tm.ops.min_norm_simplex(G, method="frank_wolfe"), B,
            qp_res(G, None, full, gap_tol=GAP_TOL["simplex frank_wolfe"]))
    if HAVE_QUADPROG:
        qp = QuadprogSimplex(G[:n_loop].numpy())
        sec.add("quadprog loop", qp.solve_all, n_loop, res)
    Gl = G[:n_loop].numpy()
    sec.add("sener_koltun loop", lambda: sener_koltun_loop(Gl), n_loop,
            qp_res(G, None, full, gap_tol=GAP_TOL["sener_koltun"]))
    Gr = G[:n_ref].clone()
    sec.add("reference loop", lambda: min_norm_simplex_reference(Gr), n_ref, res)
    support = (full > 0).sum(-1)
    sec.note = (note + " " if note else "") + (
        f"Support sizes of the solutions (count of w_i > 0, m = {m}): "
        + ", ".join(f"{k}: {int((support == k).sum())}" for k in range(1, m + 1) if int((support == k).sum())) + ".")
    return sec.run(repeats)


def single_sections(m: int, n: int, repeats: int) -> List[Section]:
    J = make_jacobian(None, m, n, seed=m)
    G = (J @ J.T).contiguous()
    w_exact = tm.ops.min_norm_simplex(G)
    res = qp_res(G, kkt_tol=EXACT_KKT)
    sec = Section(f"Single problem, m = {m} (J is {m} x {n}): weights from the Gramian")
    sec.add("torchmoo", lambda: tm.ops.min_norm_simplex(G), 1, res)
    if HAVE_QUADPROG:
        qp = QuadprogSimplex(G.numpy())
        sec.add("quadprog (one solve_qp call)", qp.solve_one, 1, res)
    Gn = G.numpy()
    sec.add("sener_koltun", lambda: MinNormSolver.find_min_norm_element(Gn)[0], 1,
            qp_res(G, None, w_exact, gap_tol=GAP_TOL["sener_koltun"]))
    if tjd is not None:
        weighting = tjd.MGDAWeighting()
        sec.add("torchjd MGDAWeighting", lambda: weighting(G), 1, qp_res(G, None, w_exact, gap_tol=GAP_TOL["torchjd"]))
    sections = [sec.run(repeats)]

    if tjd is not None:
        def weights_of(check):  # the weights behind d = J^T w (J has full row rank; d must be one), their residual
            return lambda d: check(direction_weights("direction", J, d, rtol=1e-10))

        sec2 = Section(f"Single problem, m = {m}: MGDA direction from the Jacobian (J -> J^T w)")

        def direction():
            w = tm.ops.min_norm_simplex(J @ J.T)
            return w @ J

        mgda = tjd.MGDA()
        sec2.add("torchmoo (J @ J.T, min_norm_simplex, w @ J)", direction, 1, weights_of(res))
        sec2.add("torchjd MGDA()(J)", lambda: mgda(J), 1,
                 weights_of(qp_res(G, None, w_exact, gap_tol=GAP_TOL["torchjd"])))
        sec2.baseline = "torchmoo (J @ J.T, min_norm_simplex, w @ J)"
        sections.append(sec2.run(repeats))
    return sections


def nonneg_section(B: int, m: int, repeats: int) -> Section:
    G, c = make_nonneg_problems(B, m, 20, seed=100 + m)
    lam_exact = tm.ops.nonneg_qp(G, c)  # checked as the active set's output
    res = qp_res(G, c, simplex=False, kkt_tol=EXACT_KKT)
    sec = Section(f"nonneg_qp, B = {B}, m = {m} (PNG dual: G = J J^T, c = J g - phi 1)")
    sec.add("torchmoo (method=active_set)", lambda: tm.ops.nonneg_qp(G, c), B, res)
    sec.add("torchmoo method=frank_wolfe", lambda: tm.ops.nonneg_qp(G, c, method="frank_wolfe"), B,
            qp_res(G, c, lam_exact, simplex=False, gap_tol=GAP_TOL["nonneg frank_wolfe"]))
    if HAVE_QUADPROG:
        qp = QuadprogNonneg(G.numpy(), c.numpy())
        sec.add("quadprog loop", qp.solve_all, B, res)
    sec.baseline = "torchmoo (method=active_set)"
    lam = sec.fns[sec.baseline]()
    sec.note = f"Multipliers at zero: {float((lam <= 0).double().mean()):.0%}."
    return sec.run(repeats)


def cuda_section(B: int, m: int, repeats: int) -> Optional[Section]:
    if not (torch.cuda.is_available() and getattr(tm, "cuda_built", False)):
        return None
    G = make_gram(B, m, 20, seed=m)
    Gc = G.cuda()
    res = qp_res(G, kkt_tol=EXACT_KKT)
    sec = Section(f"CUDA, B = {B}, m = {m} ({torch.cuda.get_device_name(0)}; torch.cuda.synchronize in the timing)",
                  baseline="torchmoo cuda")
    sec.add("torchmoo cuda", lambda: tm.ops.min_norm_simplex(Gc), B, res)
    sec.add("torchmoo cpu", lambda: tm.ops.min_norm_simplex(G), B, res)
    return sec.run(repeats, sync=torch.cuda.synchronize)


def stein_sections(K: int, M: int, d: int, repeats: int) -> List[Section]:
    """MT-SGD's Stein operators (float32) against the plain-torch versions of ``baselines.py``; the residual
    columns hold the relative deviation from the operator's float64 result."""
    from baselines import stein_task_matrix_obvious, stein_task_matrix_torch, stein_update_obvious, stein_update_torch
    from torchmoo.methods.mtsgd import median_bandwidth

    gen = torch.Generator().manual_seed(K * 1000 + M)
    X, S, w = torch.randn(M, d, generator=gen), torch.randn(K, M, d, generator=gen), torch.rand(K, generator=gen)
    w = w / w.sum()
    h = median_bandwidth(X)
    U64 = tm.ops.stein_task_matrix(X.double(), S.double(), h)
    phi64 = tm.ops.stein_update(X.double(), S.double(), w.double(), h)

    def deviation(ref: torch.Tensor) -> Callable[[object], torch.Tensor]:
        def dev(out):
            d = (out.double() - ref).abs().max() / ref.abs().max()
            assert float(d) < 1e-4, f"relative deviation {float(d):.1e} from the float64 result"
            return d.reshape(1)

        return dev

    size = f"K = {K}, M = {M}, d = {d:.0e}, float32, {torch.get_num_threads()} threads"
    note = ("former torch path: torchmoo's pure-torch version before the operator (batched matmul with the kernel "
            "matrix, one GEMM); obvious torch: cdist, the (M, M, d) kernel gradients, one einsum per term.")
    sec = Section(f"stein_task_matrix, {size}", note, baseline="tm.ops.stein_task_matrix", residual_label="rel. dev.")
    sec.add("tm.ops.stein_task_matrix", lambda: tm.ops.stein_task_matrix(X, S, h), 1, deviation(U64))
    sec.add("former torch path", lambda: stein_task_matrix_torch(X, S, h), 1, deviation(U64))
    sec.add("obvious torch", lambda: stein_task_matrix_obvious(X, S, h), 1, deviation(U64))
    sec2 = Section(f"stein_update, {size}", baseline="tm.ops.stein_update", residual_label="rel. dev.")
    sec2.add("tm.ops.stein_update", lambda: tm.ops.stein_update(X, S, w, h), 1, deviation(phi64))
    sec2.add("former torch path", lambda: stein_update_torch(X, S, w, h), 1, deviation(phi64))
    sec2.add("obvious torch", lambda: stein_update_obvious(X, S, w, h), 1, deviation(phi64))
    return [sec.run(repeats), sec2.run(repeats)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats per contender (default 7; quick 3)")
    ap.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to SECONDS for 3 consecutive seconds with < 5%% CPU used by other processes")
    args = ap.parse_args(argv)
    if args.wait_quiet > 0:
        deadline, quiet = time.monotonic() + args.wait_quiet, 0
        while quiet < 3 and time.monotonic() < deadline:
            load = other_cpu_load(1.0)
            quiet = quiet + 1 if load is not None and load < 0.05 else 0
    q = args.quick
    repeats = args.repeats or (3 if q else 7)
    t_start = time.perf_counter()
    load_before = other_cpu_load()
    meter = OtherLoadMeter()

    sections: List[Section] = []
    b1 = batched_section("min_norm_simplex, B = 1024, m = 5 (J: 5 x 20, float64)",
                         64 if q else 1024, 5, 16 if q else 1024, 4 if q else 64, repeats)
    sections.append(b1)
    sections.append(batched_section(
        "min_norm_simplex, B = 1024, m = 5, gradient norms spread over e^N(0,1)",
        64 if q else 1024, 5, 16 if q else 1024, 4 if q else 64, repeats, norm_spread=1.0,
        note="Rows of J scaled by exp(N(0, 1)): mostly partial supports, so the active-set path does real work."))
    b2 = batched_section("min_norm_simplex, B = 65536, m = 8 (J: 8 x 20, float64)",
                         64 if q else 65536, 8, 16 if q else 2048, 4 if q else 64, max(3, repeats - 2),
                         note="The loops are timed on the first 2048 problems (reference: 64) and reported per problem."
                         if not q else "")
    sections.append(b2)
    singles = []
    for m in (2, 10, 40):
        s = single_sections(m, 100, 15 if not q else 3)
        singles.append((m, s[0]))
        sections += s
    for m in (2, 10):
        sections.append(nonneg_section(64 if q else 1024, m, repeats))
    stein = []
    for K, M, d in ((40, 5, 10_000 if q else 100_000), (7, 50, 1_000 if q else 10_000)):
        stein += stein_sections(K, M, d, repeats)
    sections += stein
    cs = cuda_section(64 if q else 65536, 8, repeats)
    if cs is not None:
        sections.append(cs)

    # ---- output
    during = meter.fraction()
    mach = machine_description()
    loads = [x for x in (load_before, during) if x is not None]
    if loads:
        mach["CPU used by other processes (1 s before; during the run)"] = (
            ", ".join(f"{x:.0%}" for x in loads) + " of all cores")
    lines = ["## Machine", ""] + [f"- {k}: {v}" for k, v in mach.items()] + [""]
    lines += ["## Bars", ""]
    if loads and max(loads) > 0.05:
        lines += [f"**Warning: other processes used up to {max(loads):.0%} of the CPU around this run; "
                  "the timings, above all the multi-threaded ones, are not trustworthy.**", ""]
    if HAVE_QUADPROG:
        r = b1.row("quadprog loop")
        t = b1.row("torchmoo")
        met = r["ratio"] >= 100 and t["kkt_max"] <= r["kkt_max"]
        one = r["per_problem_s"] / b1.row("torchmoo, 1 thread")["per_problem_s"]
        lines.append(f"- B = 1024, m = 5: torchmoo ({torch.get_num_threads()} threads) is **{r['ratio']:.0f}x** faster "
                     f"than the single-threaded quadprog loop (bar: >= 100x; with one thread too: {one:.0f}x) "
                     f"with KKT max {t['kkt_max']:.1e} vs quadprog's {r['kkt_max']:.1e} "
                     f"(bar: equal or better): **{'MET' if met else 'NOT MET'}**.")
        parts, all_met = [], True
        for m, s in singles:
            rq = s.row("quadprog (one solve_qp call)")["ratio"]
            all_met &= rq > 1
            parts.append(f"m = {m}: {rq:.2f}x")
        lines.append(f"- Single problem, torchmoo (torch tensor in, dispatch included) vs one quadprog call: "
                     f"{', '.join(parts)} (bar: > 1 for every m): **{'MET' if all_met else 'NOT MET'}**.")
    ratios = [s.row("obvious torch")["ratio"] for s in stein if s.title.startswith("stein_task_matrix")]
    lines.append(f"- stein_task_matrix (K = 40, M = 5 and K = 7, M = 50): torchmoo is "
                 f"{', '.join(f'**{r:.1f}x**' for r in ratios)} faster than the obvious torch version "
                 f"(bar: >= 5x): **{'MET' if min(ratios) >= 5 else 'NOT MET'}**.")
    lines.append("")
    lines += ["## Tables", ""]
    for s in sections:
        lines.append(s.markdown())
    lines.append(f"_Total report time {time.perf_counter() - t_start:.0f} s{' (quick mode)' if q else ''}._")
    text = "\n".join(lines)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": mach, "quick": q, "repeats": repeats,
                                         "sections": [{"title": s.title, "baseline": s.baseline, "rows": s.rows}
                                                      for s in sections]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
