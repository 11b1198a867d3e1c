"""The mtsgd-zdt3, mtsgd-multidigits and mtsgd-sarcos experiments at tiny sizes, through the runner."""

from __future__ import annotations

import json
import math

import pytest
import torch

import torchmoo as tm
from torchmoo.experiments import mtsgd_multidigits, mtsgd_sarcos, mtsgd_zdt3, run_experiment
from torchmoo.experiments.mtsgd_ensemble import make_networks
from torchmoo.experiments.runner import experiment_names


pytestmark = pytest.mark.usefixtures("one_thread")  # small problems: one intra-op thread (conftest)


def test_registered():
    assert {"mtsgd-zdt3", "mtsgd-multidigits", "mtsgd-sarcos"} <= set(experiment_names())
    assert mtsgd_zdt3.full().steps == 10000 and mtsgd_zdt3.full().lr == 5e-4 and mtsgd_zdt3.full().particles == 50
    assert mtsgd_sarcos.full().hidden == [256, 256, 256] and mtsgd_sarcos.full().batch_size == 512


# ------------------------------------------------------------------------------------------------ ZDT3
def test_zdt3_particles_move_towards_the_front(tmp_path):
    # the narrow kernel (little repulsion): the particles must approach the Pareto set
    cfg = mtsgd_zdt3.Config(particles=16, steps=300, lr=5e-3, bandwidths=[0.01], front_points=1000,
                            checkpoint_every=100)
    res = run_experiment("mtsgd-zdt3", config=cfg, out=str(tmp_path), progress=False)
    s = res["summary"]
    assert res["complete"] and (tmp_path / "zdt3.png").exists()
    assert [r["particles"] for r in s["table"]] == ["initial (uniform)", "mt-sgd h=0.01", "moo-svgd h=0.01"]
    init, mt, moo = s["table"]
    ceiling = s["hypervolume of the analytic front (same reference)"]
    for row in (mt, moo):
        # targets exp(-f_i): the objective vectors must gain hypervolume and come nearer the front (a wrong
        # sign or a wrong combination of the scores moves them away)
        assert init["HV"] < row["HV"] <= ceiling + 1e-9
        assert row["median dist to front"] < 0.8 * init["median dist to front"]
        assert row["median max_j>=2 x_j"] < 0.8 * init["median max_j>=2 x_j"]
    # MOO-SVGD is then 16 independent MGDA descents: it must reach the front's neighbourhood
    assert moo["IGD+"] < 0.3 * init["IGD+"] and moo["near front (tol 0.05)"] > 0.0
    for unit, w in s["weights at the last step"].items():
        assert len(w) == 2 and min(w) >= -1e-9 and math.isclose(sum(w), 1.0, abs_tol=1e-6), unit
    x1 = torch.tensor(res["units"]["mt-sgd h=0.01"]["x1"])  # the particles stay in the box
    assert bool(((x1 >= cfg.box_margin) & (x1 <= 1 - cfg.box_margin)).all())


def test_zdt3_metrics_on_the_analytic_set():
    cfg = mtsgd_zdt3.Config(tolerances=[1e-3], front_points=2000)
    prob = tm.problems.ZDT3()
    X = prob.pareto_set(40)
    m = mtsgd_zdt3.particle_metrics(prob, X, prob.pareto_front(cfg.front_points), cfg)
    assert m["in_pareto_set"]["0.001"] == 1.0 and m["near_front"]["0.001"] == 1.0 and m["igd_plus"] < 0.02
    X[:, 5] = 0.1  # off the set in one tail variable: g = 1 + 0.9 / 29
    m = mtsgd_zdt3.particle_metrics(prob, X, prob.pareto_front(cfg.front_points), cfg)
    assert m["in_pareto_set"]["0.001"] == 0.0 and m["median_tail_max"] == pytest.approx(0.1)


def test_zdt3_bandwidths_that_share_a_unit_are_refused(tmp_path, monkeypatch):
    # "h=0.01" twice would hand the second bandwidth the first one's particles
    monkeypatch.setattr(mtsgd_zdt3, "_sample", lambda *a: pytest.fail("sampled with colliding unit names"))
    for i, bandwidths in enumerate(([0.01, 0.0100000001], [None, None])):
        cfg = mtsgd_zdt3.Config(particles=4, steps=2, bandwidths=bandwidths, front_points=100)
        with pytest.raises(ValueError, match="first 6 significant digits"):
            run_experiment("mtsgd-zdt3", config=cfg, out=str(tmp_path / str(i)), progress=False)


def test_zdt3_box_margin_must_be_positive(tmp_path, monkeypatch):
    # at x1 = 0 the slope of ZDT3's f2 in x1 is -inf (through sqrt(f1)): a particle clamped there stops MT-SGD
    monkeypatch.setattr(mtsgd_zdt3, "_sample", lambda *a: pytest.fail("sampled with a bad box margin"))
    for i, margin in enumerate((0.0, -1e-3, 0.5, float("nan"))):
        cfg = mtsgd_zdt3.Config(particles=4, steps=2, bandwidths=[0.01], front_points=100, box_margin=margin)
        with pytest.raises(ValueError, match=r"box_margin must lie in \(0, 0.5\)"):
            run_experiment("mtsgd-zdt3", config=cfg, out=str(tmp_path / str(i)), progress=False)


# ------------------------------------------------------------------------------------------------ MultiDigits
def test_multidigits_ensembles_learn(tmp_path):
    cfg = mtsgd_multidigits.Config(train_images=512, test_images=128, particles=2, epochs=4, batch_size=64, lr=5e-3,
                                   sweep_particles=[3], sweep_epochs=1)
    res = run_experiment("mtsgd-multidigits", config=cfg, out=str(tmp_path), progress=False)
    s = res["summary"]
    assert [r["method"] for r in s["table"]] == ["mt-sgd", "moo-svgd", "mgda", "linear"]
    assert [r["M"] for r in s["sweep"]] == [3] and (tmp_path / "multidigits.png").exists()
    for row in s["table"]:
        # chance is 0.1 per task and a uniform prediction has Brier score 0.9
        assert row["acc task 1"] > 0.25 and row["acc task 2"] > 0.25, row
        assert row["Brier 1"] < 0.82 and row["Brier 2"] < 0.82, row
        assert 0.0 <= row["ECE 1"] <= 1.0 and 0.0 <= row["ECE 2"] <= 1.0
    unit = res["units"]["mt-sgd"]
    assert unit["particles"] == 2 and len(unit["history"]) == cfg.epochs + 1
    assert unit["history"][0]["accuracy"][0] < 0.25  # untrained networks are at chance
    w = s["mt-sgd task weights, last step"]
    assert len(w) == 2 and math.isclose(sum(w), 1.0, abs_tol=1e-6)
    json.dumps(res)  # the whole record is plain JSON


def test_ensemble_metrics_of_identical_networks_equal_the_single_network():
    torch.manual_seed(0)
    net = tm.zoo.models.MultiLeNet(2)
    twin = tm.zoo.models.MultiLeNet(2)
    twin.load_state_dict(net.state_dict())
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64, 2))
    m = mtsgd_multidigits.ensemble_metrics([net, twin], x, y)
    assert m["accuracy"] == pytest.approx(m["single_accuracy"])
    with torch.no_grad():
        probs = torch.softmax(net(x)[1].double(), -1)
    assert m["brier"][1] == pytest.approx(float(tm.metrics.brier_score(probs, y[:, 1])))


def test_make_networks_leaves_the_callers_random_state_alone():
    # network m starts from the weights of torch.manual_seed(seed * 1_000_003 + 7919 (m + 1)), as it always
    # has, and the caller's random stream goes on where it was
    factory = lambda: tm.zoo.models.SarcosMLP(21, 7, hidden=(8,))  # noqa: E731
    torch.manual_seed(1234)
    torch.rand(3)
    before = torch.get_rng_state()
    nets = make_networks(factory, 2, seed=3, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        for m, net in enumerate(nets):
            torch.manual_seed(3 * 1_000_003 + 7919 * (m + 1))
            ours, reference = list(net.parameters()), list(factory().parameters())
            assert len(ours) == len(reference) and all(torch.equal(a, b) for a, b in zip(ours, reference))
    assert not torch.equal(next(nets[0].parameters()), next(nets[1].parameters()))  # two seeds, two networks


# ------------------------------------------------------------------------------------------------ SARCOS
def _sarcos_cfg(**kw) -> mtsgd_sarcos.Config:
    base = dict(synthetic_rows=[256, 64, 64], particles=2, hidden=[16], epochs=6, batch_size=64, lr=5e-3)
    base.update(kw)
    return mtsgd_sarcos.Config(**base)


def test_sarcos_synthetic_loss_decreases(tmp_path):
    res = run_experiment("mtsgd-sarcos", config=_sarcos_cfg(epochs=12), out=str(tmp_path), progress=False)
    s = res["summary"]
    assert [(r["split"], r["method"]) for r in s["table"]] == [
        (sp, m) for sp in ("validation", "test") for m in ("mt-sgd", "moo-svgd", "mgda", "linear")]
    assert s["rows (train, validation, test)"] == [256, 64, 64] and (tmp_path / "sarcos.png").exists()
    for row in s["table"]:
        assert [f"task {i}" in row for i in range(1, 8)] == [True] * 7
        assert row["average"] == pytest.approx(sum(row[f"task {i}"] for i in range(1, 8)) / 7)
    for m, before in s["average test MSE before training"].items():
        after = next(r["average"] for r in s["table"] if r["split"] == "test" and r["method"] == m)
        assert after < 0.7 * before, (m, before, after)  # standardized targets: about 1 before training


def test_synthetic_sarcos_is_deterministic():
    a = mtsgd_sarcos.synthetic_sarcos([30, 5, 5], 0.1, seed=3)
    b = mtsgd_sarcos.synthetic_sarcos([30, 5, 5], 0.1, seed=3)
    c = mtsgd_sarcos.synthetic_sarcos([30, 5, 5], 0.1, seed=4)
    assert all(torch.equal(p, q) for sa, sb in zip(a, b) for p, q in zip(sa, sb))
    assert not torch.equal(a[0][1], c[0][1]) and a[0][0].shape == (30, 21) and a[2][1].shape == (5, 7)


def _write_sarcos(path, rows: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 21, generator=g, dtype=torch.float64)
    y = x[:, :7] * 2.0 - x[:, 7:14] + 0.05 * torch.randn(rows, 7, generator=g, dtype=torch.float64)
    path.write_text("\n".join(",".join(repr(float(v)) for v in r) for r in torch.cat([x, y], 1)) + "\n")


def test_sarcos_csv_file_and_folder(tmp_path):
    csv = tmp_path / "sarcos.csv"
    _write_sarcos(csv, 200, 0)
    cfg = _sarcos_cfg(data=str(csv), methods=["mt-sgd", "linear"], epochs=20)
    s = run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path / "file"), progress=False)["summary"]
    assert s["rows (train, validation, test)"] == [160, 20, 20] and "one file" in s["data"]
    test_rows = {r["method"]: r["average"] for r in s["table"] if r["split"] == "test"}
    for m, before in s["average test MSE before training"].items():
        assert test_rows[m] < 0.5 * before, (m, before, test_rows[m])  # a linear map is easy to learn
    folder = tmp_path / "sarcos"
    folder.mkdir()
    _write_sarcos(folder / "sarcos_inv.csv", 100, 1)
    _write_sarcos(folder / "sarcos_inv_test.csv", 30, 2)
    cfg = _sarcos_cfg(data=str(folder), methods=["mgda"], epochs=2)
    s = run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path / "folder"), progress=False)["summary"]
    assert s["rows (train, validation, test)"] == [90, 10, 30] and "sarcos_inv_test.csv" in s["data"]


def test_ensemble_seconds_count_training_not_evaluation(tmp_path, monkeypatch):
    """The recorded time of a unit is the time of its training steps (the paper's per-epoch running time):
    an evaluation that takes 0.25 s per split must not enter it."""
    import time

    real = mtsgd_sarcos.ensemble_mse

    def slow(*args):
        time.sleep(0.25)
        return real(*args)

    monkeypatch.setattr(mtsgd_sarcos, "ensemble_mse", slow)
    cfg = _sarcos_cfg(methods=["linear"], epochs=2)
    s = run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path), progress=False)["summary"]
    assert s["seconds"]["linear"] < 0.25, s["seconds"]  # two epochs of four tiny steps; evaluation took 1.5 s


def test_an_interrupted_ensemble_resumes_to_the_same_result(tmp_path, monkeypatch):
    cfg = _sarcos_cfg(methods=["mt-sgd"], epochs=3)
    whole = run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path / "whole"), progress=False)
    calls = {"n": 0}
    real = mtsgd_sarcos.ensemble_mse

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # validation after epoch 2: the checkpoint of epoch 1 is on disk
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(mtsgd_sarcos, "ensemble_mse", failing)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path / "cut"), progress=False)
    assert (tmp_path / "cut" / "checkpoints" / "mt-sgd.pt").exists()
    monkeypatch.setattr(mtsgd_sarcos, "ensemble_mse", real)
    resumed = run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path / "cut"), progress=False)
    assert resumed["resumed"] == 1
    assert resumed["units"]["mt-sgd"]["history"] == whole["units"]["mt-sgd"]["history"]


# ------------------------------------------------------------------------------------------------ reported numbers
def test_linear_ensemble_matches_a_plain_loop_and_reports_the_best_validation_epoch(tmp_path, monkeypatch):
    """Linear scalarization = the mean of the 7 task MSEs (SGD with momentum 0.9: not scale-invariant as Adam
    is), the same shuffled batches for every network, re-shuffled every epoch; the table reports the epoch of
    the best validation average."""
    cfg = _sarcos_cfg(methods=["linear"], epochs=3, lr=5e-2, optimizer="sgd")
    monkeypatch.setattr(mtsgd_sarcos, "_plot", lambda *args: None)
    res = run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path), progress=False)
    (x, y), (xv, yv), (xt, yt) = mtsgd_sarcos.load_data(cfg)[0]
    nets = make_networks(lambda: tm.zoo.models.SarcosMLP(21, 7, hidden=(16,)), 2, seed=0,
                         device=torch.device("cpu"))
    opt = torch.optim.SGD([p for n in nets for p in n.parameters()], lr=cfg.lr, momentum=0.9)
    hist = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(epoch))
        for k in range(0, x.shape[0], cfg.batch_size):
            idx = order[k:k + cfg.batch_size]
            opt.zero_grad()
            for net in nets:
                torch.stack([((o - y[idx, i]) ** 2).mean() for i, o in enumerate(net(x[idx]))]).mean().backward()
            opt.step()
        with torch.no_grad():  # the ensemble predicts the mean of its networks
            pv = torch.stack([torch.stack(n(xv), -1) for n in nets]).mean(0)
            pt = torch.stack([torch.stack(n(xt), -1) for n in nets]).mean(0)
        hist.append(((pv - yv) ** 2).mean(0).double().tolist() + ((pt - yt) ** 2).mean(0).double().tolist())
    unit = res["units"]["linear"]
    for h, ours in zip(unit["history"][1:], hist):
        assert h["val"] == pytest.approx(sum(ours[:7]) / 7, rel=1e-4)
        assert h["test"] == pytest.approx(sum(ours[7:]) / 7, rel=1e-4)
    best = min(range(cfg.epochs), key=lambda e: sum(hist[e][:7]))
    rows = {r["split"]: r for r in res["summary"]["table"]}
    assert rows["validation"]["best epoch"] == rows["test"]["best epoch"] == best + 1
    assert [rows["validation"][f"task {i}"] for i in range(1, 8)] == pytest.approx(hist[best][:7], rel=1e-4)
    assert [rows["test"][f"task {i}"] for i in range(1, 8)] == pytest.approx(hist[best][7:], rel=1e-4)
    assert rows["test"]["average"] == pytest.approx(sum(hist[best][7:]) / 7, rel=1e-4)
    assert rows["validation"]["average"] == pytest.approx(sum(hist[best][:7]) / 7, rel=1e-4)
    assert res["summary"]["average test MSE before training"]["linear"] == pytest.approx(unit["history"][0]["test"])
    assert unit["weights_last_step"] == [1.0 / 7] * 7


def test_best_epoch_is_chosen_on_validation_not_on_test(tmp_path, monkeypatch):
    # validation and test disagree on purpose: validation is best at epoch 2, test at epoch 3
    val = {1: 3.0, 2: 1.0, 3: 2.0}
    test = {1: 3.0, 2: 2.0, 3: 1.0}
    calls = {"n": 0}

    def fake(nets, x, y):
        calls["n"] += 1
        epoch, is_test = (calls["n"] - 1) // 2, (calls["n"] - 1) % 2 == 1
        v = 10.0 if epoch == 0 else (test if is_test else val)[epoch]
        return [v] * 7

    monkeypatch.setattr(mtsgd_sarcos, "ensemble_mse", fake)
    res = run_experiment("mtsgd-sarcos", config=_sarcos_cfg(methods=["linear"], epochs=3), out=str(tmp_path),
                         progress=False)
    rows = {r["split"]: r for r in res["summary"]["table"]}
    assert rows["validation"]["best epoch"] == 2
    assert rows["validation"]["average"] == pytest.approx(1.0) and rows["test"]["average"] == pytest.approx(2.0)
    assert res["summary"]["average test MSE before training"]["linear"] == pytest.approx(10.0)


def test_sarcos_one_file_is_split_disjointly_and_standardized_with_the_training_statistics(tmp_path):
    csv = tmp_path / "sarcos.csv"
    _write_sarcos(csv, 200, 0)
    raw = torch.tensor([[float(v) for v in line.split(",")] for line in csv.read_text().split()],
                       dtype=torch.float32)
    cfg = _sarcos_cfg(data=str(csv), val_fraction=0.15, test_fraction=0.1)
    (tr, va, te), source = mtsgd_sarcos.load_data(cfg)
    assert [s[0].shape[0] for s in (tr, va, te)] == [150, 30, 20] and "one file" in source
    # the training split is standardized by its own statistics; the others by the training split's
    torch.testing.assert_close(tr[0].mean(0), torch.zeros(21), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr[1].std(0, unbiased=False), torch.ones(7), atol=1e-5, rtol=0)
    xr, yr = raw[:, :21], raw[:, 21:]
    # the rows' split under data_seed: validation, then test, then training
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(cfg.data_seed))
    va_i, te_i, tr_i = perm[:30], perm[30:50], perm[50:]
    assert len(set(tr_i.tolist()) | set(va_i.tolist()) | set(te_i.tolist())) == 200
    xm, xs = xr[tr_i].mean(0), xr[tr_i].std(0, unbiased=False)
    ym, ys = yr[tr_i].mean(0), yr[tr_i].std(0, unbiased=False)
    for (px, py), i in ((tr, tr_i), (va, va_i), (te, te_i)):
        torch.testing.assert_close(px, (xr[i] - xm) / xs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(py, (yr[i] - ym) / ys, atol=1e-5, rtol=1e-5)


def test_ensemble_metrics_average_the_softmax_of_different_networks():
    torch.manual_seed(0)
    nets = [tm.zoo.models.MultiLeNet(2) for _ in range(2)]
    with torch.no_grad():  # confident networks: their confidences spread over the calibration bins
        for net in nets:
            for head in net.heads:
                head.weight.mul_(40.0)
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40, 2))
    m = mtsgd_multidigits.ensemble_metrics(nets, x, y, bins=5)
    with torch.no_grad():
        probs = [[torch.softmax(o.double(), -1) for o in net(x)] for net in nets]
    for i in range(2):
        ens = (probs[0][i] + probs[1][i]) / 2
        assert m["accuracy"][i] == pytest.approx(float((ens.argmax(-1) == y[:, i]).double().mean()))
        assert m["brier"][i] == pytest.approx(float(tm.metrics.brier_score(ens, y[:, i])))
        assert m["ece"][i] == pytest.approx(float(tm.metrics.expected_calibration_error(ens, y[:, i], 5)))
        single = [float((p[i].argmax(-1) == y[:, i]).double().mean()) for p in probs]
        assert m["single_accuracy"][i] == pytest.approx(sum(single) / 2)
    assert m["ece"] != mtsgd_multidigits.ensemble_metrics(nets, x, y, bins=10)["ece"]


def test_gaussians_mmd_is_the_unbiased_estimate():
    from torchmoo.experiments import mtsgd_gaussians as G

    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(7, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64) + 2
    h = 0.7

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))

    xx = sum(k(X[i], X[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(Y[i], Y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(X[i], Y[j]) for i in range(7) for j in range(9)) / 63
    assert xx + yy - 2 * xy > 0.1 and G.mmd(X, Y, h) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    assert G.mmd(X, X + 0.0, h) == 0.0  # clamped: the unbiased estimate is negative for one sample twice


def test_gaussians_intersection_samples_follow_the_product_density():
    from torchmoo.experiments import mtsgd_gaussians as G

    toy = tm.problems.ThreeTargetToy()
    S = G.intersection_samples(toy, 4000, torch.Generator().manual_seed(0), lim=8.0, cells=200)
    assert S.shape == (4000, 2) and bool((S.abs() <= 8.0).all())
    # the mean of the samples against the density-weighted mean of a finer grid
    c = torch.linspace(-8 + 0.02, 8 - 0.02, 400, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    w = torch.softmax(toy.log_prob(grid).sum(-1), 0)
    mean = (w[:, None] * grid).sum(0)
    sd = ((w[:, None] * (grid - mean) ** 2).sum(0)).sqrt()
    assert torch.allclose(S.mean(0), mean, atol=float(4 * sd.max() / math.sqrt(4000)) + 0.02)
    assert torch.allclose(S.std(0), sd, rtol=0.1)


def test_multidigits_table_rows_are_the_units_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr(mtsgd_multidigits, "_plot", lambda *args: None)
    cfg = mtsgd_multidigits.Config(train_images=64, test_images=48, particles=2, epochs=1, methods=["linear"],
                                   sweep_particles=[1], sweep_epochs=1)
    res = run_experiment("mtsgd-multidigits", config=cfg, out=str(tmp_path), progress=False)
    s = res["summary"]
    assert s["train images"] == 64 and s["test images"] == 48
    (row,) = s["table"]
    u = res["units"]["linear"]
    assert (row["acc task 1"], row["acc task 2"]) == tuple(u["accuracy"])
    assert (row["Brier 1"], row["Brier 2"], row["ECE 1"], row["ECE 2"]) == (*u["brier"], *u["ece"])
    assert row["mean acc"] == pytest.approx(sum(u["accuracy"]) / 2)
    assert row["single-net acc"] == pytest.approx(sum(u["single_accuracy"]) / 2)
    (sw,) = s["sweep"]
    v = res["units"]["sweep mt-sgd M=1"]
    assert sw["M"] == 1 and v["particles"] == 1 and len(v["history"]) == 2
    assert sw["mean ECE"] == pytest.approx(sum(v["ece"]) / 2) and sw["mean acc"] == pytest.approx(sum(v["accuracy"]) / 2)


def test_mgda_weights_last_step_are_the_mean_over_the_networks(tmp_path, monkeypatch):
    made = []

    class Recorded(tm.methods.MGDA):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tm.methods, "MGDA", Recorded)
    res = run_experiment("mtsgd-sarcos", config=_sarcos_cfg(methods=["mgda"], particles=3, epochs=1),
                         out=str(tmp_path), progress=False)
    assert len(made) == 3  # one MGDA per network
    per_net = torch.stack([agg.weights.double() for agg in made])
    assert not torch.allclose(per_net[0], per_net[1])
    assert res["units"]["mgda"]["weights_last_step"] == pytest.approx(per_net.mean(0).tolist(), abs=1e-6)


def test_an_ensemble_interrupted_after_its_last_checkpoint_keeps_its_weights(tmp_path, monkeypatch):
    cfg = _sarcos_cfg(methods=["mt-sgd"], epochs=2)
    whole = run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path / "whole"), progress=False)
    real = tm.experiments.RunContext.record

    def cut(self, *args, **kwargs):  # the last epoch's checkpoint is written, the unit not yet recorded
        raise KeyboardInterrupt

    monkeypatch.setattr(tm.experiments.RunContext, "record", cut)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path / "cut"), progress=False)
    monkeypatch.setattr(tm.experiments.RunContext, "record", real)
    resumed = run_experiment("mtsgd-sarcos", config=cfg, out=str(tmp_path / "cut"), progress=False)
    w = resumed["units"]["mt-sgd"]["weights_last_step"]
    assert len(w) == 7 and w == whole["units"]["mt-sgd"]["weights_last_step"]
    assert resumed["units"]["mt-sgd"]["history"] == whole["units"]["mt-sgd"]["history"]


def test_zdt3_moo_svgd_weights_are_the_mean_over_particles_and_an_interrupted_unit_resumes(tmp_path, monkeypatch):
    calls = {"n": 0, "cut_at": 3}
    outs = []

    class Recorded(tm.methods.MOOSVGD):
        def backward(self):
            calls["n"] += 1
            if calls["n"] == calls["cut_at"]:
                raise KeyboardInterrupt
            out = super().backward()
            outs.append(out.weights.detach().clone())
            return out

    monkeypatch.setitem(mtsgd_zdt3.METHODS, "moo-svgd", Recorded)
    monkeypatch.delitem(mtsgd_zdt3.METHODS, "mt-sgd")
    monkeypatch.setattr(mtsgd_zdt3, "_plot", lambda *args: None)  # three runs: no figures
    cfg = mtsgd_zdt3.Config(particles=4, n_var=5, steps=5, bandwidths=[0.01], front_points=200, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):  # in step 3: the checkpoint of step 2 is on disk
        run_experiment("mtsgd-zdt3", config=cfg, out=str(tmp_path / "cut"), progress=False)
    calls.update(n=0, cut_at=-1)
    resumed = run_experiment("mtsgd-zdt3", config=cfg, out=str(tmp_path / "cut"), progress=False)
    assert calls["n"] == 3  # steps 3 to 5 only
    assert outs[-1].shape == (4, 2)  # one weight vector per particle
    w = resumed["summary"]["weights at the last step"]["moo-svgd h=0.01"]
    assert w == pytest.approx(outs[-1].double().mean(0).tolist(), abs=1e-6)
    calls.update(n=0)
    whole = run_experiment("mtsgd-zdt3", config=cfg, out=str(tmp_path / "whole"), progress=False)
    assert calls["n"] == 5
    assert whole["units"]["moo-svgd h=0.01"]["x1"] == pytest.approx(resumed["units"]["moo-svgd h=0.01"]["x1"])
