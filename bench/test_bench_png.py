"""Benchmark of one PNG step (Ye & Liu, appendix C.2.4): N = 5 two-head LeNets (MultiMNIST size).

Group ``png step N=5 m=2 lenet`` (contenders run one after the other in this process; ratios are
medians over the reference's median, same run):

* ``linear scalarization step`` (reference): the forward pass of the 5 models on one batch, one
  backward pass of the sum of their scalarized losses, one Adam step;
* ``png step``: the same forward pass, :meth:`torchmoo.methods.PNG.backward` with the energy distance
  over the 5 models (the Jacobian of the 2 losses per model, the Gram matrices, the 5 dual
  problems in one batched call, ``.grad`` written) and one Adam step. The issue's bar: at most 1.5x;
* ``png step (closures)``: the same, the losses given as one closure per model, so that each model's
  two backward passes follow its own forward pass (its activations still in cache);
* ``test_png_step_interleaved``: the linear-scalarization step in both forms (one backward pass of the
  sum over the 5 models; one backward pass per model right after its forward pass), both PNG steps and
  the floor of any exact PNG step (each model's two per-task gradients right after its forward pass,
  summed into ``.grad``: PNG without its own work),
  their repeats interleaved round-robin (group ``... interleaved``), so that a change of load moves all
  alike: the ratios to trust on a shared machine;
* ``second-order step (Ma et al.)``: one ParetoExpand step per model
  (:func:`torchmoo.methods.pareto_exploration.pareto_expand`, one direction, ``k`` MINRES iterations
  of Hessian-vector products), the second-order method the paper compares with (0.3 s per PNG step
  against 16.8 s there, on a GPU).

``test_png_step_writes_the_png_direction`` checks that the timed PNG step writes ``png_direction``'s
direction, and ``test_png_step_forms_agree`` that the closure forms (also with the vmapped Jacobian)
write the same ``.grad`` as the list form, so a fast but wrong PNG step fails.

Quick mode (``TORCHMOO_BENCH_QUICK=1``): batch 8, ``k = 2``, 2 rounds.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("pytest_benchmark")

import torchmoo as tm  # noqa: E402

from baselines import QUICK, interleaved_medians  # noqa: E402
from benchutil import REFERENCE_CONTENDER, RESULTS, record, run_timed  # noqa: E402

N = 5
BATCH = 8 if QUICK else 256
K_MINRES = 2 if QUICK else 50
GROUP = f"png step N={N} m=2 lenet (batch {BATCH})"


def _setup(device: str = "cpu", batch: int = BATCH):
    torch.manual_seed(0)
    models = [tm.zoo.models.MultiLeNet(num_tasks=2).to(device) for _ in range(N)]
    x = torch.randn(batch, 1, 28, 28).to(device)
    y = torch.randint(0, 10, (batch, 2)).to(device)
    opt = torch.optim.Adam([p for m in models for p in m.parameters()], lr=1e-3)
    return models, x, y, opt


def _losses(model, x, y):
    return [F.cross_entropy(o, y[:, i]) for i, o in enumerate(model(x))]


def test_png_step_writes_the_png_direction():
    """Not a benchmark: the timed PNG step writes the direction of png_direction for every model."""
    models, x, y, _ = _setup()
    png = tm.methods.PNG(tm.methods.EnergyDistance(), alpha=0.5, gamma=0.1)  # as in the timed steps
    losses = [_losses(m, x, y) for m in models]
    Js = [tm.autograd.jacobian(l, m.parameters(), retain_graph=True) for l, m in zip(losses, models)]
    png.backward(losses, models)
    _, U = png.criterion.value_and_grad(png.stats.losses)
    for k, (m, J) in enumerate(zip(models, Js)):
        ref = tm.methods.png_direction(J.double(), U[k] @ J.double(), alpha=0.5,
                                                 threshold=float(png.stats.threshold[k])).direction
        got = tm.autograd.flatten([p.grad for p in m.parameters()]).double()
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("batched", [None, True])
def test_png_step_forms_agree(batched):
    """Not a benchmark: one closure per model (the ``png step (closures)`` contenders) writes the same
    ``.grad`` as the list of losses (checked against ``png_direction`` above)."""
    grads = []
    for closures in (False, True):
        models, x, y, _ = _setup(batch=16)
        png = tm.methods.PNG(tm.methods.EnergyDistance(), alpha=0.5, gamma=0.1)
        if closures:
            png.backward([lambda m=m: _losses(m, x, y) for m in models], models, batched=batched)
        else:
            png.backward([_losses(m, x, y) for m in models], models)
        grads.append([tm.autograd.flatten([p.grad for p in m.parameters()]) for m in models])
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize(
    "contender", ["linear scalarization step", "png step", "png step (closures)", "second-order step (Ma et al.)"]
)
def test_png_step(benchmark, contender):
    models, x, y, opt = _setup()
    if contender == "linear scalarization step":
        w = torch.linspace(0.1, 0.9, N)

        def step():
            opt.zero_grad(set_to_none=True)
            total = sum(w[k] * l[0] + (1 - w[k]) * l[1] for k, l in enumerate(_losses(m, x, y) for m in models))
            total.backward()
            opt.step()
    elif contender == "png step":
        png = tm.methods.PNG(tm.methods.EnergyDistance(), alpha=0.5, gamma=0.1)

        def step():
            opt.zero_grad(set_to_none=True)
            png.backward([_losses(m, x, y) for m in models], models)
            opt.step()
    elif contender == "png step (closures)":
        png = tm.methods.PNG(tm.methods.EnergyDistance(), alpha=0.5, gamma=0.1)

        def step():
            opt.zero_grad(set_to_none=True)
            png.backward([lambda m=m: _losses(m, x, y) for m in models], models)
            opt.step()
    else:
        step = _second_order_step()

    run_timed(benchmark, GROUP, step, rounds=3 if contender.startswith("second") else 7)
    record(benchmark, GROUP, contender, 1, reference="linear scalarization step")


def _second_order_step(device: str = "cpu", batch: int = BATCH):
    """Ma et al.'s step on the same 5 models: one ParetoExpand direction per model (``K_MINRES`` MINRES
    iterations of Hessian-vector products), a small move along it."""
    from torchmoo.methods import pareto_exploration as pe

    models, x, y, _ = _setup(device, batch)

    def step():
        for m in models:
            params = list(m.parameters())
            exp = pe.pareto_expand(lambda m=m: _losses(m, x, y), params, num_directions=1, k=K_MINRES,
                                   generator=torch.Generator().manual_seed(0))
            assert exp.info.matvec_calls == K_MINRES  # all iterations ran: the comparison is at the paper's k
            with torch.no_grad():
                for p, d in zip(params, tm.autograd.unflatten(exp.directions[0] * 1e-3, params)):
                    p.add_(d)
    return step


def _steps(device: str = "cpu", batch: int = BATCH, vmapped: bool = False):
    """The contenders of the interleaved group, each on its own copy of the 5 models; ``vmapped`` adds
    the PNG step with the Jacobian as one vmapped backward pass per model."""

    def linear_scalarization(per_model: bool):
        models, x, y, opt = _setup(device, batch)
        w = torch.linspace(0.1, 0.9, N)

        def step():
            opt.zero_grad(set_to_none=True)
            if per_model:
                for k, m in enumerate(models):
                    l0, l1 = _losses(m, x, y)
                    (w[k] * l0 + (1 - w[k]) * l1).backward()
            else:
                sum(w[k] * l[0] + (1 - w[k]) * l[1] for k, l in enumerate(_losses(m, x, y) for m in models)).backward()
            opt.step()
        return step

    def png_step(closures: bool, batched=None):
        models, x, y, opt = _setup(device, batch)
        png = tm.methods.PNG(tm.methods.EnergyDistance(), alpha=0.5, gamma=0.1)

        def step():
            opt.zero_grad(set_to_none=True)
            if closures:
                png.backward([lambda m=m: _losses(m, x, y) for m in models], models, batched=batched)
            else:
                png.backward([_losses(m, x, y) for m in models], models, batched=batched)
            opt.step()
        return step

    def floor():
        # the two per-task gradients of each model right after its forward pass, summed into .grad: the
        # work any exact PNG step must do, without any of PNG's own
        models, x, y, opt = _setup(device, batch)

        def step():
            opt.zero_grad(set_to_none=True)
            for m in models:
                l0, l1 = _losses(m, x, y)
                params = list(m.parameters())
                g0 = torch.autograd.grad(l0, params, retain_graph=True, allow_unused=True)
                g1 = torch.autograd.grad(l1, params, allow_unused=True)
                for p, a, b in zip(params, g0, g1):
                    p.grad = a if b is None else (b if a is None else a + b)
            opt.step()
        return step

    steps = {
        "linear scalarization step": linear_scalarization(per_model=False),
        "linear scalarization step (per model)": linear_scalarization(per_model=True),
        "png step": png_step(closures=False),
        "png step (closures)": png_step(closures=True),
        "two per-task backward passes (floor)": floor(),
    }
    if vmapped:
        steps["png step (closures, vmapped Jacobian)"] = png_step(closures=True, batched=True)
    return steps


def test_png_step_interleaved(benchmark):
    steps = _steps()
    group = GROUP + " interleaved"
    medians = interleaved_medians(steps, repeats=2 if QUICK else 21)
    REFERENCE_CONTENDER[group] = "linear scalarization step"
    rows = RESULTS.setdefault(group, {})
    for name, seconds in medians.items():
        rows[name] = {"per_problem_s": seconds, "count": 1}
    fastest_ls = min(medians["linear scalarization step"], medians["linear scalarization step (per model)"])
    rows["linear scalarization step (per model)"]["ratio"] = (
        medians["linear scalarization step (per model)"] / medians["linear scalarization step"])
    for name in ("png step", "png step (closures)"):
        rows[name]["ratio"] = medians[name] / medians["linear scalarization step"]
        benchmark.extra_info[f"ratio {name} / linear scalarization"] = rows[name]["ratio"]
        benchmark.extra_info[f"ratio {name} / fastest linear scalarization"] = medians[name] / fastest_ls
    floor_s = medians["two per-task backward passes (floor)"]
    rows["two per-task backward passes (floor)"]["ratio"] = floor_s / medians["linear scalarization step"]
    benchmark.extra_info["ratio png step (closures) / floor"] = medians["png step (closures)"] / floor_s
    benchmark.group = group
    benchmark.pedantic(steps["png step (closures)"], rounds=1, iterations=1)


def main(argv=None) -> None:
    """``python bench/test_bench_png.py [--device cuda]``: the interleaved group as a markdown table."""
    import argparse

    from baselines import machine_description

    parser = argparse.ArgumentParser(description="PNG step vs linear-scalarization step, 5 two-head LeNets")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--second-order", type=int, default=0, metavar="R",
                        help="also time Ma et al.'s second-order step (50 MINRES iterations per model) against the "
                             "linear-scalarization step, R repeats interleaved (about 50 HVPs per model each)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    # wait for this device's queue (cuda:1's too, not only the current device's)
    sync = functools.partial(torch.cuda.synchronize, device) if device.type == "cuda" else None
    # on a GPU the vmapped Jacobian (one batched backward pass per model) may win: time it there too
    steps = _steps(args.device, args.batch, vmapped=sync is not None)
    medians = interleaved_medians(steps, repeats=args.repeats, warmup=3, sync=sync)
    ref = medians["linear scalarization step"]
    where = args.device if sync is None else torch.cuda.get_device_name(torch.device(args.device))
    out = [f"- {k}: {v}" for k, v in machine_description().items()] + [
        "", f"**PNG step, N = {N} two-head LeNets, m = 2, batch {args.batch}, {where}** (ratio = time / time of "
        "`linear scalarization step`)", "", "| contender | median per step | ratio |", "|---|---:|---:|"]
    for name, seconds in medians.items():
        out.append(f"| {name} | {seconds * 1e3:.2f} ms | {seconds / ref:.3f} |")
    fastest = min(ref, medians["linear scalarization step (per model)"])
    out += ["", f"png step (closures) / fastest linear scalarization: {medians['png step (closures)'] / fastest:.3f}",
            f"png step (closures) / floor (PNG's own work): "
            f"{medians['png step (closures)'] / medians['two per-task backward passes (floor)']:.3f}",
            f"floor / fastest linear scalarization: {medians['two per-task backward passes (floor)'] / fastest:.3f}"]
    if args.second_order:
        second = interleaved_medians({"linear scalarization step": steps["linear scalarization step"],
                                      "second-order step (Ma et al.)": _second_order_step(args.device, args.batch)},
                                     repeats=args.second_order, warmup=1, sync=sync)
        ratio = second["second-order step (Ma et al.)"] / second["linear scalarization step"]
        out += ["", f"second-order step (Ma et al., {K_MINRES} MINRES iterations per model): "
                f"{second['second-order step (Ma et al.)'] * 1e3:.1f} ms, {ratio:.1f}x the linear-scalarization step, "
                f"{ratio / (medians['png step (closures)'] / ref):.1f}x the png step (closures) "
                f"({args.second_order} interleaved repeats)"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
