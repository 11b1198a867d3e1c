"""MT-SGD and MOO-SVGD (torchmoo.methods.mtsgd): the Stein terms against a loop reference that takes the
kernel derivatives by autograd, U's RKHS properties, Lemma 1, the SVGD special case, and the toy."""

import pytest
import torch

import torchmoo as tm
from torchmoo.methods import mtsgd as mt

DT = torch.float64


def _k(a, b, h):
    return torch.exp(-((a - b) ** 2).sum() / h)


def _u_loop(X, S, h):
    """Supplement Eq. 3 term by term, kernel derivatives by autograd, float64 double loop."""
    K, M, d = S.shape
    U = torch.zeros(K, K, dtype=DT)
    for a in range(M):
        for b in range(M):
            xa, xb = X[a], X[b]
            k = _k(xa, xb, h)
            dk_da, dk_db = torch.autograd.functional.jacobian(lambda u, v: _k(u, v, h), (xa, xb))
            H = torch.autograd.functional.hessian(lambda z: _k(z[:d], z[d:], h), torch.cat([xa, xb]))
            tr = torch.diagonal(H[:d, d:]).sum()
            for i in range(K):
                for j in range(K):
                    U[i, j] += k * S[i, a] @ S[j, b] + S[i, a] @ dk_db + S[j, b] @ dk_da + tr
    return U / M**2


def _svgd_loop(X, s, h):
    """Textbook SVGD update (Liu & Wang 2016) with grad_{x_b} k(x_b, x_a) by autograd."""
    M = X.shape[0]
    out = torch.zeros_like(X)
    for a in range(M):
        for b in range(M):
            xb = X[b].clone().requires_grad_(True)
            k = _k(xb, X[a], h)
            (gk,) = torch.autograd.grad(k, xb)
            out[a] += k.detach() * s[b] + gk
    return out / M


def _problem(K, M, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(M, d, generator=g, dtype=DT), torch.randn(K, M, d, generator=g, dtype=DT)


@pytest.mark.parametrize("K,M,d,h", [(1, 4, 3, 1.0), (3, 5, 2, 0.7), (4, 3, 5, 4.0), (2, 1, 3, 2.0)])
def test_u_matches_loop_reference(K, M, d, h):
    X, S = _problem(K, M, d, K * 100 + M)
    U = mt.stein_task_matrix(X, S, h)
    torch.testing.assert_close(U, _u_loop(X, S, h), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("M", [2, 5, 8])
def test_median_bandwidth_and_kernel_follow_their_definitions(M):
    """h = med^2 / log(M + 1) with med the median pairwise distance; k_ab = exp(-|x_a - x_b|^2 / h)."""
    import math

    X, _ = _problem(1, M, 3, 50 + M)
    med = float(torch.pdist(X).median())
    h = mt.median_bandwidth(X)
    assert h == pytest.approx(med**2 / math.log(M + 1), rel=1e-12)
    torch.testing.assert_close(mt.rbf_kernel(X, 0.7), torch.exp(-torch.cdist(X, X) ** 2 / 0.7), rtol=1e-12, atol=1e-14)
    assert mt.median_bandwidth(X[:1].expand(M, 3)) == 1.0  # coincident particles


def test_u_is_gram_of_directions_symmetric_psd():
    X, S = _problem(5, 8, 4, 1)
    h = mt.median_bandwidth(X)
    U = mt.stein_task_matrix(X, S, h)
    assert torch.equal(U, U.T)
    assert float(torch.linalg.eigvalsh(U).min()) > -1e-12 * float(U.abs().max())
    # U[i, i] = |phi_i|^2_H >= 0 and Cauchy-Schwarz
    assert bool((U.diagonal() >= 0).all())
    assert bool((U**2 <= U.diagonal()[:, None] * U.diagonal()[None, :] * (1 + 1e-12)).all())


def test_float32_close_to_float64():
    X, S = _problem(3, 6, 10, 2)
    U64 = mt.stein_task_matrix(X, S, 3.0)
    U32 = mt.stein_task_matrix(X.float(), S.float(), 3.0)
    torch.testing.assert_close(U32.double(), U64, rtol=1e-5, atol=1e-5 * float(U64.abs().max()))


@pytest.mark.parametrize("M,d,h", [(5, 2, 1.0), (7, 3, 0.3)])
def test_k1_update_is_svgd(M, d, h):
    X, S = _problem(1, M, d, M)
    phi = mt.stein_update(X, S, h, torch.ones(1, dtype=DT))
    torch.testing.assert_close(phi, _svgd_loop(X, S[0], h), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mt.stein_directions(X, S, h)[0], phi, rtol=1e-12, atol=1e-12)


def test_update_is_weighted_sum_of_directions():
    X, S = _problem(4, 6, 3, 3)
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=DT)
    phis = mt.stein_directions(X, S, 1.5)
    torch.testing.assert_close(mt.stein_update(X, S, 1.5, w), torch.einsum("k,kad->ad", w, phis))


def test_lemma1_common_direction():
    """<phi*, phi_i>_H = (U w*)_i >= w*'U w* = |phi*|^2_H for every target (Lemma 1)."""
    for seed in range(5):
        X, S = _problem(4, 6, 3, 10 + seed)
        S[1] = -S[0] + 0.3 * S[1]  # conflicting targets, so that w* is not a vertex
        U = mt.stein_task_matrix(X, S, 1.0)
        w = tm.ops.min_norm_simplex(U)
        Uw = U @ w
        assert bool((Uw >= w @ Uw - 1e-10 * float(U.abs().max())).all())
        # and the QP is solved: no vertex gives a smaller w'Uw along any simplex direction
        assert float(w @ Uw) <= float(U.diagonal().min()) + 1e-12


def test_float32_far_from_origin_matches_float64():
    """Distances, the median bandwidth, the repulsion and the Stein directions do not change under a common
    shift; in float32 they must stay accurate for particles far from the origin relative to their spread
    (e.g. networks fine-tuned from one initialization)."""
    g = torch.Generator().manual_seed(0)
    base = 1e-3 * torch.randn(6, 20000, generator=g, dtype=DT)
    S = torch.randn(3, 6, 20000, generator=g, dtype=DT)
    X32 = (base + 10.0).float()
    X64 = X32.double()  # the same particles, so only the arithmetic differs
    h = mt.median_bandwidth(X64)
    assert mt.median_bandwidth(X32) == pytest.approx(h, rel=1e-4)
    torch.testing.assert_close(mt.rbf_kernel(X32, h).double(), mt.rbf_kernel(X64, h), rtol=0, atol=1e-4)
    ref = mt.stein_directions(X64, S, h)
    err = (mt.stein_directions(X32, S.float(), h).double() - ref).norm() / ref.norm()
    assert float(err) < 1e-4, float(err)
    # MOO-SVGD's repulsion: with zero scores its direction is the repulsion alone
    dirs = []
    for X in (X32, X64):
        P = X.clone().requires_grad_()
        dirs.append(mt.MOOSVGD(P, lambda Z: 0.0 * Z[:, :2], bandwidth=h).compute().direction.double())
    assert float((dirs[0] - dirs[1]).norm() / dirs[1].norm()) < 1e-3


def test_mtsgd_float32_weights_in_many_dimensions():
    """Linear log-densities ``log p_i = <A_i, x>`` give every particle the scores ``A_i``; then ``c = 0`` and
    ``U = (sum_ab k_ab) A'A / M^2 + const``, so ``w*`` is the min-norm point of ``A'A`` (MGDA). With
    d = 20000 the trace constant exceeds the rest of ``U`` about 3e6 times: float32 particles must still get
    the float64 weights."""
    g = torch.Generator().manual_seed(0)
    M, d = 5, 20000
    X0 = 0.05 * torch.randn(M, d, generator=g, dtype=DT)
    a = torch.randn(d, generator=g, dtype=DT)
    A = 3e-5 * torch.stack([a, -3.0 * a + 0.5 * torch.randn(d, generator=g, dtype=DT)], 1)  # (d, K), conflicting
    w_ref = tm.ops.min_norm_simplex(A.T @ A)
    assert 0.6 < float(w_ref[0]) < 0.9  # an interior point, not a vertex
    for dtype in (torch.float64, torch.float32):
        X = X0.to(dtype).clone().requires_grad_()
        Ad = A.to(dtype)
        step = mt.MTSGD(X, lambda Z: Z @ Ad).backward()
        assert step.weights.dtype == dtype and step.U.dtype == DT
        torch.testing.assert_close(step.weights.double(), w_ref, rtol=0, atol=1e-6)
        # and the float64 U of the QP is the paper's U (supplement Eq. 3) up to float32 inputs
        S = Ad.double().T[:, None, :].expand(2, M, d).contiguous()  # the scores the method saw
        U_ref = mt.stein_task_matrix(X.detach().double(), S, step.bandwidth)
        spread = U_ref - U_ref[0, 0]
        torch.testing.assert_close(step.U - step.U[0, 0], spread, rtol=0, atol=1e-4 * float(spread.abs().max()))


@pytest.mark.parametrize("cls", [mt.MTSGD, mt.MOOSVGD])
def test_half_precision_particles_with_large_scores(cls):
    """float16 particles whose scores are fine in float16 but whose squared norms overflow it (> 65504):
    the QPs run in a wider dtype, and the step agrees with the float32 one."""
    def log_p(X):
        return torch.stack([-50.0 * ((X - 1) ** 2).sum(1), -50.0 * ((X + 1) ** 2).sum(1)], 1)

    X16 = (3.0 * torch.randn(5, 20, generator=torch.Generator().manual_seed(0))).half()
    steps = [cls(X.clone().requires_grad_(), log_p, bandwidth=50.0).backward() for X in (X16, X16.float())]
    assert steps[0].direction.dtype == torch.float16 and bool(torch.isfinite(steps[0].direction).all())
    torch.testing.assert_close(steps[0].weights.float(), steps[1].weights, rtol=0, atol=5e-3)
    rel = (steps[0].direction.float() - steps[1].direction).norm() / steps[1].direction.norm()
    assert float(rel) < 1e-2


@pytest.mark.parametrize("cls", [mt.MTSGD, mt.MOOSVGD])
def test_half_precision_particles_with_large_spread(cls):
    """float16 particles whose squared norms and distances overflow float16 (> 65504) though the particles
    do not: the median bandwidth, the kernel and the repulsion are computed in float32, so the bandwidth is
    the float32 one (not the fallback h = 1 of coincident particles) and the step agrees with the float32 one."""
    X16 = (100.0 * torch.randn(5, 20, generator=torch.Generator().manual_seed(0))).half()
    X32 = X16.float()  # the same particles
    h = mt.median_bandwidth(X32)
    assert h > 1e5
    assert mt.median_bandwidth(X16) == pytest.approx(h, rel=1e-6)
    K32 = mt.rbf_kernel(X32, h)
    assert float(K32.min()) > 0.05  # a kernel that couples the particles
    torch.testing.assert_close(mt.rbf_kernel(X16, h).float(), K32, rtol=0, atol=2e-3)
    S32 = torch.randn(2, 5, 20, generator=torch.Generator().manual_seed(1))
    ref = mt.stein_directions(X32, S32, h)
    err = (mt.stein_directions(X16, S32.half(), h).float() - ref).norm() / ref.norm()
    assert float(err) < 1e-2, float(err)

    def log_p(X):
        return torch.stack([-1e-4 * ((X - 1) ** 2).sum(1), -1e-4 * ((X + 1) ** 2).sum(1)], 1)

    steps = [cls(X.clone().requires_grad_(), log_p).backward() for X in (X16, X32)]
    assert steps[0].bandwidth == pytest.approx(steps[1].bandwidth, rel=1e-6)
    assert steps[0].direction.dtype == torch.float16 and bool(torch.isfinite(steps[0].direction).all())
    rel = (steps[0].direction.float() - steps[1].direction).norm() / steps[1].direction.norm()
    assert float(rel) < 1e-2, float(rel)


def test_tensor_bandwidth_is_kept_as_a_number():
    toy = tm.problems.ThreeTargetToy()
    X = toy.initial_particles(4, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for cls in (mt.MTSGD, mt.MOOSVGD):
        step = cls(X, toy.log_prob, bandwidth=torch.tensor(2.0)).backward()
        assert type(step.bandwidth) is float and step.bandwidth == 2.0
        with pytest.raises(ValueError, match="h must be a positive finite number"):
            cls(X, toy.log_prob, bandwidth=torch.tensor(-1.0))


def test_zero_bandwidth_is_refused_before_any_step():
    """h = 0 gives k = exp(-0 / 0) = NaN on the diagonal: the constructors and the kernel refuse it, so
    that MOO-SVGD (which forms its kernel in Python) cannot return a NaN step."""
    toy = tm.problems.ThreeTargetToy()
    X = toy.initial_particles(4, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for cls in (mt.MTSGD, mt.MOOSVGD):
        with pytest.raises(ValueError, match="h must be a positive finite number, got 0.0"):
            cls(X, toy.log_prob, bandwidth=0.0)
    with pytest.raises(ValueError, match="h must be a positive finite number, got 0.0"):
        mt.rbf_kernel(X.detach(), 0.0)
    with pytest.raises(ValueError, match="h must be a positive finite number, got 0.0"):
        mt.stein_directions(X.detach(), toy.score(X.detach()).movedim(-2, 0), 0.0)


def test_errors():
    X, S = _problem(2, 3, 2, 0)
    with pytest.raises(ValueError, match=r"S must have shape \(K, M, d\) = \(K, 3, 2\).*got \(2, 2, 2\)"):
        mt.stein_task_matrix(X, S[:, :2], 1.0)
    with pytest.raises(TypeError, match="S must have the dtype of X"):
        mt.stein_task_matrix(X, S.float(), 1.0)
    with pytest.raises(ValueError, match="h must be a positive finite number, got 0.0"):
        mt.stein_task_matrix(X, S, 0.0)
    with pytest.raises(ValueError, match="S must be finite, found NaN"):
        mt.stein_task_matrix(X, S * float("nan"), 1.0)
    with pytest.raises(TypeError, match="X must be a torch.Tensor of particles"):
        mt.stein_task_matrix(X.numpy(), S, 1.0)
    with pytest.raises(ValueError, match="requires_grad"):
        mt.MTSGD(X, lambda x: x)


def _toy_run(cls, steps, M=20, seed=0):
    toy = tm.problems.ThreeTargetToy()
    X = toy.initial_particles(M, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    method = cls(X, toy.log_prob)
    opt = torch.optim.SGD([X], lr=0.5)
    for _ in range(steps):
        opt.zero_grad()
        method.backward()
        opt.step()
    return toy, X.detach(), method


@pytest.mark.parametrize("seed", [0, 2])
def test_mtsgd_toy_reaches_shared_region(seed):
    """The three targets share mass only near the origin (their 0.3 components); a particle at one
    target's heavy mode has log p_j < -20 for the others. From N(0, 25 I) (mean log p_i about -40)
    MT-SGD brings the typical particle to where all three log-densities exceed -5, and raises every
    target's mean log-density (the KLs all decrease)."""
    toy = tm.problems.ThreeTargetToy()
    X0 = toy.initial_particles(20, generator=torch.Generator().manual_seed(seed))
    _, X, method = _toy_run(mt.MTSGD, 200, seed=seed)
    lp0, lp = toy.log_prob(X0).mean(0), toy.log_prob(X)
    assert float(lp.min(1).values.median()) > -5.0, lp
    assert bool((lp.mean(0) > lp0 + 20.0).all()), (lp0, lp.mean(0))
    assert float(torch.pdist(X).min()) > 0.05  # the repulsion keeps particles apart
    w = method.last.weights
    assert float(w.min()) > 0.0 and abs(float(w.sum()) - 1.0) < 1e-12  # every target is active


def test_mtsgd_backward_writes_negative_direction():
    toy = tm.problems.ThreeTargetToy()
    X = toy.initial_particles(6, generator=torch.Generator().manual_seed(1)).requires_grad_()
    step = mt.MTSGD(X, toy.log_prob, bandwidth=2.0).backward()
    S = toy.score(X.detach()).movedim(-2, 0)
    U = mt.stein_task_matrix(X.detach(), S, 2.0)
    torch.testing.assert_close(step.U, U)
    w = tm.ops.min_norm_simplex(U)
    torch.testing.assert_close(X.grad, -mt.stein_update(X.detach(), S, 2.0, w))
    # a list of K callables gives the same step as one (M, K) callable
    X2 = X.detach().clone().requires_grad_()
    step2 = mt.MTSGD(X2, [lambda x, i=i: toy.log_prob(x)[:, i] for i in range(3)], bandwidth=2.0).backward()
    torch.testing.assert_close(step2.direction, step.direction)


def test_moosvgd_matches_per_particle_loop():
    toy = tm.problems.ThreeTargetToy()
    X = toy.initial_particles(5, generator=torch.Generator().manual_seed(2)).requires_grad_()
    step = mt.MOOSVGD(X, toy.log_prob, bandwidth=3.0).backward()
    S = toy.score(X.detach()).movedim(-2, 0)
    g = torch.empty_like(X)
    for a in range(5):
        Ga = S[:, a] @ S[:, a].T
        wa = tm.ops.min_norm_simplex(Ga)
        torch.testing.assert_close(step.weights[a], wa)
        # per-particle Lemma 1 / MGDA: <g_a, S[i, a]> >= |g_a|^2
        ga = wa @ S[:, a]
        assert bool((S[:, a] @ ga >= ga @ ga - 1e-10 * float(Ga.abs().max())).all())
        g[a] = ga
    torch.testing.assert_close(step.direction, _svgd_loop(X.detach(), g, 3.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(X.grad, -step.direction)
    # the one-QP-per-particle mode (the authors' loop, kept for timing) takes exactly the same step
    Xl = X.detach().clone().requires_grad_()
    step_loop = mt.MOOSVGD(Xl, toy.log_prob, bandwidth=3.0, batched_qp=False).backward()
    torch.testing.assert_close(step_loop.weights, step.weights, rtol=0, atol=0)
    torch.testing.assert_close(step_loop.direction, step.direction, rtol=0, atol=0)
    with pytest.raises(TypeError, match="batched_qp"):
        mt.MOOSVGD(Xl, toy.log_prob, batched_qp=1)


def test_moosvgd_alpha_weighs_the_repulsion():
    """phi(x_a) = mean_b [k_ab g_b + alpha grad_{x_b} k_ab]: alpha = 0 leaves the kernel-smoothed MGDA
    directions alone, and the update is affine in alpha (alpha = 1 is the loop of the test above)."""
    toy = tm.problems.ThreeTargetToy()
    X0 = toy.initial_particles(5, generator=torch.Generator().manual_seed(3))
    dirs = {}
    for alpha in (0.0, 0.5, 1.0):
        step = mt.MOOSVGD(X0.clone().requires_grad_(), toy.log_prob, bandwidth=3.0, alpha=alpha).backward()
        dirs[alpha] = step.direction
    S = toy.score(X0).movedim(-2, 0)
    g = torch.einsum("ak,kad->ad", step.weights, S)
    torch.testing.assert_close(dirs[0.0], mt.rbf_kernel(X0, 3.0) @ g / 5, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dirs[1.0], _svgd_loop(X0, g, 3.0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dirs[0.5], 0.5 * (dirs[0.0] + dirs[1.0]), rtol=1e-12, atol=1e-12)
    assert float((dirs[1.0] - dirs[0.0]).norm()) > 1e-3  # the repulsion is not negligible here
    with pytest.raises(ValueError, match="alpha"):
        mt.MOOSVGD(X0.clone().requires_grad_(), toy.log_prob, alpha=-1.0)


def test_backward_overwrites_grad_and_reports_log_probs():
    """backward writes -phi into .grad (a stale gradient, e.g. zero_grad(set_to_none=False) or two calls
    without zero_grad, is replaced, not accumulated), and SteinStep.log_probs is log p_i(x_a) (K, M)."""
    toy = tm.problems.ThreeTargetToy()
    X = toy.initial_particles(6, generator=torch.Generator().manual_seed(4)).requires_grad_()
    X.grad = torch.full_like(X, 7.0)
    for cls in (mt.MTSGD, mt.MOOSVGD):
        method = cls(X, toy.log_prob, bandwidth=2.0)
        for _ in range(2):  # the second call finds the first call's gradient
            step = method.backward()
            torch.testing.assert_close(X.grad, -step.direction, rtol=0, atol=0)
        torch.testing.assert_close(step.log_probs, toy.log_prob(X.detach()).T)
    # ensembles: log p_i = -loss_i, one column per network
    torch.manual_seed(1)
    x = torch.randn(8, 3, dtype=DT)
    nets = [torch.nn.Linear(3, 2).double() for _ in range(3)]
    losses = lambda net: (net(x) ** 2).mean(0) + torch.tensor([0.0, 1.0], dtype=DT)  # noqa: E731
    step = mt.MTSGD(nets, losses).backward()
    expected = -torch.stack([losses(n).detach() for n in nets], 1)  # (K, M)
    torch.testing.assert_close(step.log_probs, expected)


def test_ensemble_of_modules():
    """M networks, K task losses: particles are the flattened parameters, scores -grad loss_i."""
    torch.manual_seed(0)
    x = torch.randn(32, 3, dtype=DT)
    y = torch.stack([x @ torch.tensor([1.0, -1.0, 0.5], dtype=DT), x @ torch.tensor([0.5, 1.0, -1.0], dtype=DT)], 1)
    nets = [torch.nn.Linear(3, 2).double() for _ in range(3)]
    losses = lambda net: ((net(x) - y) ** 2).mean(0)  # (K = 2,)
    method = mt.MTSGD(nets, losses)
    step = method.backward()
    X = torch.stack([torch.cat([p.detach().reshape(-1) for p in n.parameters()]) for n in nets])
    S = torch.stack([torch.stack([-torch.cat([gg.reshape(-1) for gg in torch.autograd.grad(losses(n)[i], list(n.parameters()))])
                                  for n in nets]) for i in range(2)])
    h = mt.median_bandwidth(X)
    w = tm.ops.min_norm_simplex(mt.stein_task_matrix(X, S, h))
    phi = mt.stein_update(X, S, h, w)
    torch.testing.assert_close(step.direction, phi)
    torch.testing.assert_close(nets[1].weight.grad, -phi[1, :6].reshape(2, 3))
    torch.testing.assert_close(nets[1].bias.grad, -phi[1, 6:])
    # training moves every network to lower losses on both tasks
    before = torch.stack([losses(n).detach() for n in nets])
    opt = torch.optim.Adam([p for n in nets for p in n.parameters()], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        method.backward()
        opt.step()
    after = torch.stack([losses(n).detach() for n in nets])
    assert bool((after < 0.5 * before).all()), (before, after)


def test_ensemble_particles_are_the_trainable_parameters_only():
    """A frozen parameter is not part of the particle: no score, no .grad, and the kernel does not see it."""
    torch.manual_seed(2)
    x = torch.randn(16, 3, dtype=DT)
    nets = [torch.nn.Linear(3, 2).double() for _ in range(3)]
    for n in nets:
        n.bias.requires_grad_(False)
    losses = lambda net: (net(x) ** 2).mean(0)  # noqa: E731
    step = mt.MTSGD(nets, losses).backward()
    assert step.direction.shape == (3, 6)
    X = torch.stack([n.weight.detach().reshape(-1) for n in nets])
    assert step.bandwidth == mt.median_bandwidth(X)
    for n, row in zip(nets, step.direction):
        assert n.bias.grad is None
        torch.testing.assert_close(n.weight.grad, -row.reshape(2, 3))


def test_gaussians_experiment_smallest_size(tmp_path):
    from torchmoo.experiments import run_experiment
    from torchmoo.experiments import mtsgd_gaussians as exp

    cfg = exp.Config(particles=8, steps=20, intersection_samples=200, timing_particles=[3, 6], timing_steps=3)
    res = run_experiment("mtsgd-gaussians", out=str(tmp_path), progress=False, config=cfg)
    assert res["complete"] and (tmp_path / "gaussians.png").exists()
    rows = {r["method"]: r for r in res["summary"]["table"]}
    assert set(rows) == {"mt-sgd sgd", "moo-svgd sgd", "mt-sgd adam", "moo-svgd adam"}
    assert set(res["summary"]["ms per step"]) == {"mt-sgd", "moo-svgd", "moo-svgd, one QP per particle"}
    # exact samples of the intersection are far closer to it (in MMD) than 8 particles after 20 steps
    assert res["summary"]["MMD^2 of exact intersection samples (same M)"] < min(
        r["MMD^2 to p1*p2*p3"] for r in rows.values())
    # the grid sampler of p1 p2 p3: its samples have a higher product density than the targets' own samples
    toy = tm.problems.ThreeTargetToy()
    inter = exp.intersection_samples(toy, 2000, torch.Generator().manual_seed(0))
    own = toy.sample(2000, 0, generator=torch.Generator().manual_seed(0))
    assert float(toy.log_prob(inter).sum(-1).mean()) > float(toy.log_prob(own).sum(-1).mean()) + 5.0
    assert float(inter.mean(0).norm()) < 0.5  # the product's mass sits at the origin
    assert exp.mmd(inter[:1000], inter[1000:]) < 0.01


def test_readable_errors_for_bad_particles_and_configs(tmp_path):
    toy = tm.problems.ThreeTargetToy()
    # one network is not an ensemble: say what particles must be (not "'Linear' object is not iterable")
    with pytest.raises(TypeError, match="non-empty sequence of torch.nn.Module, got Linear"):
        mt.MTSGD(torch.nn.Linear(2, 1), lambda m: m.weight.sum())
    with pytest.raises(TypeError, match="got int"):
        mt.MOOSVGD(3, toy.log_prob)
    # particles that diverged to NaN: the message names the particles, not the targets
    X = torch.full((4, 2), float("nan"), dtype=DT, requires_grad=True)
    for cls in (mt.MTSGD, mt.MOOSVGD):
        with pytest.raises(ValueError, match="particles contain NaN"):
            cls(X, toy.log_prob).backward()
    Y = torch.zeros(4, 2, dtype=DT, requires_grad=True)
    with pytest.raises(ValueError, match="a target returned a non-finite score"):
        mt.MTSGD(Y, lambda Z: torch.log(Z * 0.0)).backward()
    # a sampling experiment without (or with a repeated) optimizer is refused before any work
    from torchmoo.experiments import mtsgd_gaussians as exp

    for opts in ([], ["sgd", "sgd"]):
        cfg = exp.Config(particles=4, steps=1, optimizers=opts, timing_particles=[3], timing_steps=1)
        with pytest.raises(ValueError, match="optimizers must be a non-empty list of distinct names"):
            tm.experiments.run_experiment("mtsgd-gaussians", out=str(tmp_path / str(len(opts))), progress=False,
                                          config=cfg)
