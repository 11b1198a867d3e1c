"""SIMOL (Yu et al., ICLR 2023): the soft improvement objective, MAML's meta-gradient, the outer step."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchmoo as tm
from torchmoo.methods import MAML, SIMOL, MetaLearner, ReweightingNetwork, TaskTableWeights, soft_improvement_objective


def _tasks(B=4, K=5, Q=6, dtype=torch.float64, seed=0):
    ds = tm.zoo.data.SinusoidTasks(num_tasks=B, num_support=K, num_query=Q, seed=seed)
    xs, ys, xq, yq = (torch.stack(t).to(dtype) for t in zip(*[ds[i] for i in range(B)]))
    return xs, ys, xq, yq


def _tiny_model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)


# ---- the soft improvement objective (Eq. 13-14, Proposition 3.2) ----------------------------------------


def test_objective_matches_formula_and_proposition_3_2():
    torch.manual_seed(1)
    B, n, lam1, lam2 = 5, 7, 0.3, 2.0
    J = torch.randn(B, n, dtype=torch.float64)
    r = torch.rand(B, dtype=torch.float64) * 2
    K = soft_improvement_objective(r, J, lam1, lam2)
    gbar = (r[:, None] * J).mean(0)
    expected = -gbar.square().sum() / (2 * lam1) - lam2 / 2 * (r.mean() - 1) ** 2
    torch.testing.assert_close(K, expected, rtol=1e-12, atol=1e-12)
    # Proposition 3.2: with lam2 = 0, K is the minimum over d of (1/B) sum_tau r_tau <g_tau, d> + lam1/2 ||d||^2,
    # found here numerically (L-BFGS from d = 0), not from the closed form
    d = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([d], lr=1.0, max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        f = (r[:, None] * J).mean(0) @ d + lam1 / 2 * d.square().sum()
        f.backward()
        return f

    opt.step(closure)
    inner_min = float(closure().detach())
    K0 = soft_improvement_objective(r, J, lam1, 0.0)
    assert float(K0) == pytest.approx(inner_min, rel=1e-10)
    # the penalty term alone: K(lam2) - K(0) = -lam2/2 (mean r - 1)^2
    torch.testing.assert_close(K - K0, -lam2 / 2 * (r.mean() - 1) ** 2, rtol=1e-12, atol=1e-14)


def test_objective_gradient_wrt_theta_matches_finite_differences():
    torch.manual_seed(2)
    net = ReweightingNetwork(3, hidden=(5,)).double()
    nn.init.normal_(net.net[-1].weight, std=0.5)  # leave the r = 1 start so that every path matters
    feats = torch.randn(6, 3, dtype=torch.float64)
    J = torch.randn(6, 4, dtype=torch.float64)
    simol = SIMOL(net, lambda1=0.7, lambda2=1.5)
    r = simol.set_weights(feats)
    K = simol.reweight_backward(r, J)  # writes -dK/dtheta
    params = list(net.parameters())
    analytic = torch.cat([-p.grad.reshape(-1) for p in params])
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    eps = 1e-6
    fd = torch.empty_like(flat)
    for i in range(flat.numel()):
        vals = []
        for s in (eps, -eps):
            v = flat.clone()
            v[i] += s
            torch.nn.utils.vector_to_parameters(v, params)
            with torch.no_grad():
                vals.append(float(soft_improvement_objective(net(feats), J, 0.7, 1.5)))
        fd[i] = (vals[0] - vals[1]) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, params)
    torch.testing.assert_close(analytic, fd, rtol=1e-6, atol=1e-8)
    assert torch.isfinite(K)


def test_single_task_ascent_reaches_closed_form_weight():
    # |B| = 1: K(r) = -r^2 ||g||^2 / (2 lam1) - lam2 (r - 1)^2 / 2 is maximized at
    # r* = lam2 / (lam2 + ||g||^2 / lam1): tasks with large gradients are down-weighted.
    g2, lam1, lam2 = 3.0, 0.5, 2.0
    J = torch.tensor([[3.0**0.5, 0.0]], dtype=torch.float64)
    net = TaskTableWeights(1).double()
    simol = SIMOL(net, lam1, lam2)
    opt = torch.optim.SGD(net.parameters(), lr=0.02)
    for _ in range(2000):
        opt.zero_grad()
        simol.reweight_backward(simol.set_weights(torch.zeros(1, dtype=torch.long)), J)
        opt.step()
    r_star = lam2 / (lam2 + g2 / lam1)
    assert float(net.theta.detach()[0] ** 2) == pytest.approx(r_star, rel=1e-6)


def test_limits_of_the_objective():
    torch.manual_seed(3)
    J = torch.randn(4, 3, dtype=torch.float64)
    # zero gradients: only the penalty is left, maximal (0) exactly at mean r = 1
    Z = torch.zeros(4, 3, dtype=torch.float64)
    assert float(soft_improvement_objective(torch.ones(4, dtype=torch.float64), Z, 1.0, 5.0)) == 0.0
    assert float(soft_improvement_objective(torch.full((4,), 1.5, dtype=torch.float64), Z, 1.0, 5.0)) < 0.0
    # lam1 -> infinity: K -> penalty alone; lam2 = 0: K = -||gbar||^2/(2 lam1) <= 0, maximal at r = 0
    r = torch.rand(4, dtype=torch.float64)
    pen = -0.5 * 2.0 * (r.mean() - 1) ** 2
    torch.testing.assert_close(soft_improvement_objective(r, J, 1e12, 2.0), pen, rtol=1e-9, atol=1e-9)
    assert float(soft_improvement_objective(torch.zeros(4, dtype=torch.float64), J, 1.0, 0.0)) == 0.0
    assert float(soft_improvement_objective(r, J, 1.0, 0.0)) < 0.0


def test_objective_computes_in_a_wide_enough_dtype():
    # float16 weights (e.g. a reweighting network under autocast) with meta-gradients of norm ~400: a float16
    # Gram matrix overflows (||g||^2 > 65504) and K~_B becomes -inf; it must be computed in float32 instead
    torch.manual_seed(5)
    J = torch.randn(4, 50) * 60
    r = torch.rand(4) + 0.5
    ref = soft_improvement_objective(r.half().double(), J.double(), 10.0, 1.0)
    w16 = r.half().requires_grad_(True)
    K16 = soft_improvement_objective(w16, J, 10.0, 1.0)
    K16.backward()
    assert torch.isfinite(K16) and bool(torch.isfinite(w16.grad).all())
    assert float(K16.detach()) == pytest.approx(float(ref), rel=1e-5)
    # float32 weights, float64 gradients: the Gram matrix keeps J's precision
    K = soft_improvement_objective(r.clone().requires_grad_(True), J.double(), 10.0, 1.0)
    assert K.dtype == torch.float64
    assert float(K.detach()) == pytest.approx(float(soft_improvement_objective(r.double(), J.double(), 10.0, 1.0)), rel=1e-13)
    with pytest.raises(TypeError, match="floating point"):
        soft_improvement_objective(torch.ones(4, dtype=torch.long), J)


def test_weights_cannot_start_at_their_stationary_point_zero():
    # r = (last layer)^2 with zero last weights and bias 0: r = 0 and dr/dtheta = 0, so neither the meta-update
    # (1/B) r'J nor the ascent on theta would ever move; such a start is rejected with a readable message
    with pytest.raises(ValueError, match="init_output must be a positive"):
        ReweightingNetwork(3, init_output=0.0)
    with pytest.raises(ValueError, match="init_output must be a positive"):
        TaskTableWeights(2, init_output=-1.0)
    with pytest.raises(ValueError, match="init_output must be a positive"):
        TaskTableWeights(2, init_output=0.0)
    with pytest.raises(TypeError, match="integer task indices"):
        TaskTableWeights(2)(torch.tensor([0.9, 1.2]))
    torch.testing.assert_close(TaskTableWeights(3, init_output=0.25)(torch.tensor([2, 0])), torch.full((2,), 0.25))


def test_bad_arguments_raise():
    J = torch.randn(3, 2)
    with pytest.raises(ValueError, match="lambda1"):
        soft_improvement_objective(torch.ones(3), J, 0.0, 1.0)
    with pytest.raises(ValueError, match="lambda2"):
        soft_improvement_objective(torch.ones(3), J, 1.0, -1.0)
    with pytest.raises(ValueError, match="weights must be"):
        soft_improvement_objective(torch.ones(2), J)
    with pytest.raises(TypeError, match="reweighting_net must be a torch.nn.Module, got str"):
        SIMOL("not a module")
    with pytest.raises(ValueError, match="inner_steps"):
        MAML(nn.Linear(1, 1), F.mse_loss, inner_steps=0)
    maml = MAML(nn.Linear(1, 1), F.mse_loss)
    opt = torch.optim.SGD(maml.model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="reweight_optimizer"):
        MetaLearner(maml, opt, SIMOL(TaskTableWeights(2)))
    with pytest.raises(RuntimeError, match="set_weights"):
        SIMOL(TaskTableWeights(2))(J)


# ---- MAML's meta-gradient (Eq. 15) --------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_second_order_meta_gradient_matches_finite_differences(steps):
    model = _tiny_model()
    maml = MAML(model, F.mse_loss, inner_lr=0.05, inner_steps=steps)
    xs, ys, xq, yq = _tasks(B=2)
    J, losses = maml.task_jacobian(xs, ys, xq, yq)
    params = list(model.parameters())
    flat = torch.nn.utils.parameters_to_vector(params).detach()

    def task_losses(v):
        torch.nn.utils.vector_to_parameters(v, params)
        out = []
        for t in range(2):  # plain autograd, independent of the vmap path
            p = list(model.parameters())
            w = [q.detach().requires_grad_(True) for q in p]
            cur = w
            for _ in range(steps):
                names = [k for k, _ in model.named_parameters()]
                ls = F.mse_loss(torch.func.functional_call(model, dict(zip(names, cur)), (xs[t],)), ys[t])
                g = torch.autograd.grad(ls, cur)
                cur = [a - 0.05 * b for a, b in zip(cur, g)]
            names = [k for k, _ in model.named_parameters()]
            pred = torch.func.functional_call(model, dict(zip(names, cur)), (xq[t],))
            out.append(float(F.mse_loss(pred, yq[t]).detach()))
        return torch.tensor(out, dtype=torch.float64)

    torch.testing.assert_close(task_losses(flat), losses, rtol=1e-12, atol=1e-12)
    eps = 1e-6
    fd = torch.empty_like(J)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        fd[:, i] = (task_losses(flat + e) - task_losses(flat - e)) / (2 * eps)
    torch.nn.utils.vector_to_parameters(flat, params)
    torch.testing.assert_close(J, fd, rtol=1e-5, atol=1e-8)
    # the first-order variant drops the Hessian term, so it differs from the true meta-gradient
    maml.first_order = True
    J1, losses1 = maml.task_jacobian(xs, ys, xq, yq)
    torch.testing.assert_close(losses1, losses)
    assert (J1 - J).norm() > 1e-3 * J.norm()


# ---- the outer step ------------------------------------------------------------------------------------------


def test_simol_with_unit_weights_equals_maml_exactly():
    model = _tiny_model(torch.float32)
    xs, ys, xq, yq = _tasks(B=4, dtype=torch.float32)
    feats = torch.cat([xs, ys], dim=-1).flatten(1)
    m_maml, m_simol = model, copy.deepcopy(model)
    maml_learner = MetaLearner(MAML(m_maml, F.mse_loss, 0.01), torch.optim.Adam(m_maml.parameters(), lr=1e-2))
    net = ReweightingNetwork(feats.shape[1])  # starts at r = 1 exactly (zero last weights, bias 1)
    frozen = torch.optim.SGD(net.parameters(), lr=0.0)  # frozen: r stays 1
    simol_learner = MetaLearner(MAML(m_simol, F.mse_loss, 0.01), torch.optim.Adam(m_simol.parameters(), lr=1e-2),
                                SIMOL(net, 1.0, 1.0), reweight_optimizer=frozen)
    for _ in range(3):
        maml_learner.step(xs, ys, xq, yq)
        out = simol_learner.step(xs, ys, xq, yq, task_features=feats)
        assert out["mean_weight"] == 1.0
    for a, b in zip(m_maml.parameters(), m_simol.parameters()):
        assert torch.equal(a, b)


def test_simol_update_is_weighted_mean_and_theta_ascends():
    model = _tiny_model()
    xs, ys, xq, yq = _tasks(B=3)
    maml = MAML(model, F.mse_loss, 0.02)
    net = TaskTableWeights(3, init_output=1.0).double()
    with torch.no_grad():
        net.theta.copy_(torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    simol = SIMOL(net, 2.0, 0.5)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    J0, losses0 = maml.task_jacobian(xs, ys, xq, yq)
    learner = MetaLearner(maml, torch.optim.SGD(model.parameters(), lr=0.1), simol,
                          reweight_optimizer=torch.optim.SGD(net.parameters(), lr=1e-3))
    tasks = torch.arange(3)
    r = net(tasks).detach()
    out = learner.step(xs, ys, xq, yq, task_features=tasks)
    assert out["loss"] == pytest.approx(float(losses0.mean()), rel=1e-12)  # the loss at w^s
    assert out["mean_weight"] == pytest.approx(1.0 / 3.0 * (0.25 + 1.0 + 2.25), rel=1e-12)
    w1 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    # Algorithm 1, line 6: w^{s+1} = w^s - beta (1/B) sum r_tau g_tau
    torch.testing.assert_close(w1, w0 - 0.1 * (r @ J0) / 3, rtol=1e-12, atol=1e-12)
    # line 7 with the gradients at w^{s+1}: a small ascent step increases K~_B
    J1, _ = maml.task_jacobian(xs, ys, xq, yq)
    # Algorithm 1 ("next"): the reported K is K~_B(theta^s) with the gradients at w^{s+1}, not at w^s
    assert out["K"] == pytest.approx(float(soft_improvement_objective(r, J1, 2.0, 0.5)), rel=1e-12)
    assert out["K"] != pytest.approx(float(soft_improvement_objective(r, J0, 2.0, 0.5)), rel=1e-6)
    assert float(soft_improvement_objective(net(tasks), J1, 2.0, 0.5).detach()) > out["K"]
    # and theta moved along +grad K~_B(J1): theta^{s+1} = theta^s + beta' dK/dtheta
    theta = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    (dK,) = torch.autograd.grad(soft_improvement_objective(theta**2, J1, 2.0, 0.5), theta)
    torch.testing.assert_close(net.theta.detach(), theta.detach() + 1e-3 * dK, rtol=1e-12, atol=1e-15)


def test_simol_theta_at_current_reuses_the_gradients_at_w_s():
    """Eq. 13 (theta_at="current"): K~_B and the ascent on theta use J at w^s; one Jacobian per step."""
    model = _tiny_model()
    xs, ys, xq, yq = _tasks(B=3)
    maml = MAML(model, F.mse_loss, 0.02)
    net = TaskTableWeights(3).double()
    with torch.no_grad():
        net.theta.copy_(torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))
    J0, _ = maml.task_jacobian(xs, ys, xq, yq)
    calls = []
    jac = maml.task_jacobian
    maml.task_jacobian = lambda *a: calls.append(1) or jac(*a)
    learner = MetaLearner(maml, torch.optim.SGD(model.parameters(), lr=0.1), SIMOL(net, 2.0, 0.5),
                          reweight_optimizer=torch.optim.SGD(net.parameters(), lr=1e-3), theta_at="current")
    r = net(torch.arange(3)).detach()
    out = learner.step(xs, ys, xq, yq, task_features=torch.arange(3))
    assert len(calls) == 1
    assert out["K"] == pytest.approx(float(soft_improvement_objective(r, J0, 2.0, 0.5)), rel=1e-12)
    theta = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64, requires_grad=True)
    (dK,) = torch.autograd.grad(soft_improvement_objective(theta**2, J0, 2.0, 0.5), theta)
    torch.testing.assert_close(net.theta.detach(), theta.detach() + 1e-3 * dK, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="theta_at"):
        MetaLearner(maml, torch.optim.SGD(model.parameters(), lr=0.1), theta_at="previous")


@pytest.mark.parametrize("method", [None, tm.methods.MGDA(), tm.methods.PCGrad(seed=0), tm.methods.CAGrad(0.4),
                                    tm.methods.ImprovementFunction(1.0)])
def test_minibatch_baselines_apply_the_aggregator_to_task_gradients(method):
    model = _tiny_model()
    xs, ys, xq, yq = _tasks(B=4)
    maml = MAML(model, F.mse_loss, 0.02)
    J, losses = maml.task_jacobian(xs, ys, xq, yq)
    w0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    learner = MetaLearner(maml, torch.optim.SGD(model.parameters(), lr=0.01), method)
    learner.step(xs, ys, xq, yq)
    d = J.mean(0) if method is None else copy.deepcopy(method)(J, losses)
    if isinstance(method, tm.methods.PCGrad):  # random projection order: compare against the weights it used
        d = method.weights @ J
    w1 = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    torch.testing.assert_close(w1, w0 - 0.01 * d, rtol=1e-10, atol=1e-12)
    if isinstance(method, tm.methods.MGDA):  # a common descent direction of every task in the batch
        assert bool((J @ d >= -1e-10).all())


# ---- the sinusoid experiment (tiny) --------------------------------------------------------------------------


def test_sinusoid_experiment_runs_reports_and_resumes(tmp_path):
    from torchmoo.experiments.simol_sinusoid import PAPER, Config

    cfg = Config(shots=[2], meta_steps=3, meta_batch=4, test_tasks=20, eval_every=2)
    res = tm.experiments.run_experiment("simol-sinusoid", out=str(tmp_path), progress=False, config=cfg)
    table = res["summary"]["table"]
    assert [row["method"] for row in table] == list(cfg.methods)
    for row in table:
        assert row["mse"] > 0 and row["worst-10% mse"] >= row["mse"]  # the worst 10% are at least the mean
        assert row["paper mse"] == PAPER[row["method"]][2][0]
        units = res["units"][f"{row['method']} 2-shot seed 0"]
        assert len(units["test_losses"]) == 20 and [c["step"] for c in units["curve"]] == [2, 3]
    # depth ablation (Table 5): the 2-layer row is the main SIMOL run, a 3-layer network is another model
    abl = {row["layers"]: row for row in res["summary"]["depth ablation (Table 5)"]}
    assert set(abl) == {2, 3} and abl[2]["paper mse"] == 1.24 and abl[3]["paper worst-10%"] == 6.01
    simol = next(row for row in table if row["method"] == "simol")
    assert abl[2]["mse"] == simol["mse"] and abl[3]["mse"] != simol["mse"]
    assert len(res["units"]["simol 2-shot seed 0 3 layers"]["test_losses"]) == 20
    again = tm.experiments.run_experiment("simol-sinusoid", out=str(tmp_path), progress=False, config=cfg)
    assert again["resumed"] == 1 and again["summary"]["table"] == table


def test_sinusoid_full_config_and_bad_theta_at(tmp_path):
    from torchmoo.experiments.simol_sinusoid import Config, full

    # section 5.1: the base learners are adapted for 5 inner steps of learning rate 0.01
    cfg = full()
    assert cfg.inner_steps == 5 and cfg.inner_lr == 0.01 and cfg.meta_batch == 16
    assert cfg.meta_steps * cfg.meta_batch == 160_000 and cfg.test_tasks == 1000 and cfg.outer_lr == 1e-3
    # a bad simol_theta_at is refused before any unit is trained
    bad = Config(shots=[2], methods=["maml", "simol"], meta_steps=1, meta_batch=2, test_tasks=10,
                 simol_theta_at="previous", ablation_layers=[])
    with pytest.raises(ValueError, match="simol_theta_at"):
        tm.experiments.run_experiment("simol-sinusoid", out=str(tmp_path), progress=False, config=bad)


# ---- prototypical networks (Algorithm 3) --------------------------------------------------------------------


def test_protonet_episode_loss_matches_hand_computation():
    import math

    model = nn.Linear(2, 2).double()
    with torch.no_grad():  # identity embedding: distances are those of the raw points
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    pn = tm.methods.ProtoNet(model, n_way=2)
    xs = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [0.0, 4.0]], dtype=torch.float64)
    ys = torch.tensor([0, 0, 1, 1])
    xq = torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    yq = torch.tensor([0, 1])
    # prototypes (1, 0) and (0, 3); squared distances: query 1 -> (1, 5), query 2 -> (10, 0)
    expected = 0.5 * (math.log(1 + math.exp(-4.0)) + math.log(1 + math.exp(-10.0)))
    loss = pn.task_loss(pn.params(), xs, ys, xq, yq)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    # vectorized per-task meta-gradients equal a plain autograd loop over the episodes
    torch.manual_seed(4)
    X = torch.randn(3, 6, 2, dtype=torch.float64)
    Y = torch.tensor([0, 1, 2, 0, 1, 2]).repeat(3, 1)
    pn3 = tm.methods.ProtoNet(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 3)).double(), n_way=3)
    J, losses = pn3.task_jacobian(X, Y, X.flip(1), Y.flip(1))
    for t in range(3):
        lt = pn3.task_loss(pn3.params(), X[t], Y[t], X[t].flip(0), Y[t].flip(0))
        g = torch.autograd.grad(lt, list(pn3.params().values()))
        torch.testing.assert_close(J[t], torch.cat([v.reshape(-1) for v in g]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(losses[t], lt.detach())


def test_sinusoid_unit_interrupted_mid_training_resumes_exactly(tmp_path, monkeypatch):
    """An interrupted unit continues from its last evaluation (the runner's contract: a unit in progress
    checkpoints itself), with the same numbers as an uninterrupted run; PCGrad's random orders included."""
    from torchmoo.experiments.simol_sinusoid import Config

    cfg = Config(shots=[2], methods=["pcgrad", "simol"], meta_steps=6, meta_batch=4, test_tasks=10, eval_every=2,
                 ablation_layers=[])
    whole = tm.experiments.run_experiment("simol-sinusoid", out=str(tmp_path / "whole"), progress=False, config=cfg)
    real = MetaLearner.step
    calls = {"n": 0}

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5 and calls.get("cut"):  # step 5 of pcgrad: the checkpoint of step 4 is on disk
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MetaLearner, "step", counted)
    calls["cut"] = True
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment("simol-sinusoid", out=str(tmp_path / "cut"), progress=False, config=cfg)
    assert list((tmp_path / "cut" / "checkpoints").iterdir())
    calls.update(n=0, cut=False)
    resumed = tm.experiments.run_experiment("simol-sinusoid", out=str(tmp_path / "cut"), progress=False, config=cfg)
    assert calls["n"] == 2 + 6  # pcgrad's last two steps, then all of simol's
    for unit in ("pcgrad 2-shot seed 0", "simol 2-shot seed 0"):
        assert resumed["units"][unit]["test_losses"] == whole["units"][unit]["test_losses"]
        assert resumed["units"][unit]["curve"] == whole["units"][unit]["curve"]
    assert not list((tmp_path / "cut" / "checkpoints").iterdir())  # dropped once the unit is recorded


def test_meta_learner_state_dict_round_trip():
    """A fresh meta-learner loaded from state_dict() continues exactly like the original: model, optimizer,
    SIMOL's reweighting network and its optimizer, and an aggregator's own generator (PCGrad)."""
    xs, ys, xq, yq = _tasks(B=4)
    feats = torch.cat([xs, ys], dim=-1).flatten(1)

    def build(kind):
        model = _tiny_model()
        maml = MAML(model, F.mse_loss, 0.02)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        if kind == "simol":
            torch.manual_seed(1)
            net = ReweightingNetwork(feats.shape[1], hidden=(4,)).double()
            return MetaLearner(maml, opt, SIMOL(net, 1.0, 1.0), torch.optim.Adam(net.parameters(), lr=0.1))
        return MetaLearner(maml, opt, tm.methods.PCGrad(seed=3))

    for kind in ("simol", "pcgrad"):
        a, b = build(kind), build(kind)
        f = feats if kind == "simol" else None
        for _ in range(2):
            a.step(xs, ys, xq, yq, task_features=f)
        b.load_state_dict(copy.deepcopy(a.state_dict()))
        for _ in range(2):
            out_a, out_b = a.step(xs, ys, xq, yq, task_features=f), b.step(xs, ys, xq, yq, task_features=f)
            assert out_a == out_b
        for p, q in zip(a.maml.model.parameters(), b.maml.model.parameters()):
            assert torch.equal(p, q)
        if kind == "pcgrad":
            assert torch.equal(a.method.orders, b.method.orders)
    with pytest.raises(ValueError, match="state must hold exactly"):
        build("pcgrad").load_state_dict(build("simol").state_dict())


def test_readable_errors_for_bad_task_indices_hyperparameters_and_configs(tmp_path):
    table = TaskTableWeights(3)
    # -1 would silently be the last task's weight
    with pytest.raises(IndexError, match=r"task indices must lie in 0 \.\. 2, got -1 \.\. 1"):
        table(torch.tensor([1, -1]))
    with pytest.raises(IndexError, match="got 0 .. 3"):
        table(torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer task indices"):
        table(torch.tensor([True, False]))  # bools would be read as tasks 1 and 0
    torch.testing.assert_close(table(torch.empty(0, dtype=torch.long)), torch.empty(0))
    for bad in ("0.1", None, [1.0]):
        with pytest.raises(TypeError, match="lambda1 must be a real number"):
            SIMOL(table, lambda1=bad)
        with pytest.raises(TypeError, match="lambda2 must be a real number"):
            soft_improvement_objective(torch.ones(2), torch.ones(2, 3), 1.0, bad)
        with pytest.raises(TypeError, match="inner_lr must be a real number"):
            MAML(nn.Linear(1, 1), F.mse_loss, inner_lr=bad)
    assert SIMOL(table, lambda1=torch.tensor(2.0)).lambda1 == 2.0  # a one-element tensor is a number
    # experiment settings that would fail only after training are refused up front
    from torchmoo.experiments.simol_sinusoid import Config

    cfg = Config(shots=[2], methods=["maml"], meta_steps=1, meta_batch=2, test_tasks=10, eval_every=0,
                 ablation_layers=[])
    with pytest.raises(ValueError, match="eval_every"):
        tm.experiments.run_experiment("simol-sinusoid", out=str(tmp_path / "s"), progress=False, config=cfg)
    from torchmoo.experiments import simol_fewshot as FS

    for bad in (dict(eval_chunk=0), dict(timing_steps=0)):
        with pytest.raises(ValueError, match="eval_chunk and timing_steps"):
            tm.experiments.run_experiment("simol-fewshot-digits", out=str(tmp_path / "f"), progress=False,
                                          config=FS.Config(meta_steps=1, **bad))


# ---- first-order MAML, SIMOL as an aggregator, state and input checks ---------------------------------------


@pytest.mark.parametrize("steps", [1, 2])
def test_first_order_maml_is_the_query_gradient_at_the_adapted_weights(steps):
    # FOMAML: g_tau = grad L_query evaluated at w_tau (the inner steps' Jacobian replaced by the identity)
    model = _tiny_model()
    maml = MAML(model, F.mse_loss, inner_lr=0.05, inner_steps=steps, first_order=True)
    xs, ys, xq, yq = _tasks(B=2)
    J, losses = maml.task_jacobian(xs, ys, xq, yq)
    names = [k for k, _ in model.named_parameters()]
    for t in range(2):  # plain autograd, independent of the vmap path
        cur = [p.detach().clone() for p in model.parameters()]
        for _ in range(steps):
            cur = [c.requires_grad_(True) for c in cur]
            ls = F.mse_loss(torch.func.functional_call(model, dict(zip(names, cur)), (xs[t],)), ys[t])
            cur = [(a - 0.05 * b).detach() for a, b in zip(cur, torch.autograd.grad(ls, cur))]
        cur = [c.requires_grad_(True) for c in cur]
        lq = F.mse_loss(torch.func.functional_call(model, dict(zip(names, cur)), (xq[t],)), yq[t])
        g = torch.autograd.grad(lq, cur)
        torch.testing.assert_close(J[t], torch.cat([v.reshape(-1) for v in g]), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(losses[t], lq.detach(), rtol=1e-12, atol=1e-12)


def test_simol_as_aggregator_gives_the_weighted_mean_and_treats_J_as_constant():
    torch.manual_seed(6)
    net = TaskTableWeights(3).double()
    with torch.no_grad():
        net.theta.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    simol = SIMOL(net, 1.0, 1.0)
    r = simol.set_weights(torch.arange(3))
    J = torch.randn(3, 4, dtype=torch.float64)
    expected = (torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64) @ J) / 3  # (1/B) sum r_tau g_tau
    torch.testing.assert_close(simol(J), expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(simol.direction(J, r), expected, rtol=1e-12, atol=1e-14)
    # the ascent on theta must not back-propagate into the meta-gradients
    Jg = J.clone().requires_grad_(True)
    simol.reweight_backward(r, Jg)
    assert Jg.grad is None and net.theta.grad is not None
    # a network that returns (B, 1) instead of (B,) is refused with a readable message
    with pytest.raises(ValueError, match="reweighting network must return"):
        SIMOL(nn.Linear(2, 1)).set_weights(torch.randn(3, 2))


def test_reweighting_network_output_is_the_square_of_its_last_layer():
    feats = torch.randn(5, 3)
    torch.testing.assert_close(ReweightingNetwork(3, hidden=(4,), init_output=0.25)(feats), torch.full((5,), 0.25))
    net = ReweightingNetwork(3, hidden=(4,)).double()
    with torch.no_grad():
        net.net[-1].bias.fill_(-0.7)  # a negative last layer: r = 0.49, not |.| nor the raw value
    torch.testing.assert_close(net(feats.double()), torch.full((5,), 0.49, dtype=torch.float64))
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lambda1 must be a positive finite"):
            SIMOL(net, lambda1=bad)
        with pytest.raises(ValueError, match="inner_lr must be a positive finite"):
            MAML(nn.Linear(1, 1), F.mse_loss, inner_lr=bad)
    with pytest.raises(ValueError, match="lambda2 must be a non-negative finite"):
        soft_improvement_objective(torch.ones(2), torch.ones(2, 3), 1.0, float("inf"))


def test_state_dict_of_another_kind_of_meta_learner_is_refused():
    def learner(simol):
        model = _tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if not simol:
            return MetaLearner(MAML(model, F.mse_loss), opt)
        net = TaskTableWeights(2).double()
        return MetaLearner(MAML(model, F.mse_loss), opt, SIMOL(net), torch.optim.SGD(net.parameters(), lr=0.1))

    # a SIMOL state holds more than a MAML learner has: loading it would silently drop the reweighting network
    with pytest.raises(ValueError, match="state must hold exactly"):
        learner(False).load_state_dict(learner(True).state_dict())
    with pytest.raises(ValueError, match="state must hold exactly"):
        learner(True).load_state_dict(learner(False).state_dict())
    with pytest.raises(ValueError, match="state must hold exactly"):
        learner(False).load_state_dict([1, 2])


def test_task_jacobian_refuses_mismatched_task_counts_and_non_batched_inputs():
    maml = MAML(_tiny_model(), F.mse_loss)
    xs, ys, xq, yq = _tasks(B=3)
    with pytest.raises(ValueError, match="same number of tasks"):
        maml.task_jacobian(xs, ys, xq[:2], yq[:2])
    with pytest.raises(ValueError, match="y_support must be a"):
        maml.task_jacobian(xs, ys[0, :, 0], xq, yq)
