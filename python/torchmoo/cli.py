"""The ``torchmoo`` command line. For now: ``torchmoo demo``, a tour of the QP operators."""

from __future__ import annotations

import argparse
import time
from typing import List, Optional

import torch

import torchmoo as tm


def demo(device: str = "cpu") -> None:
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


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="torchmoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run a short tour of the operators")
    p_demo.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.device)


if __name__ == "__main__":
    main()
