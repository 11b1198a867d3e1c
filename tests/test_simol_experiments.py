"""SIMOL's experiments at tiny sizes: the two-objective toy (figure 1) and few-shot classification (Tables 2-4)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torchmoo as tm
from torchmoo.experiments import simol_fewshot as FS
from torchmoo.experiments import simol_toy as TOY
from torchmoo.zoo.data import DataNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the toy (appendix A) -----------------------------------------------------------------------------------


def test_toy_jacobian_matches_autograd():
    toy = tm.problems.SIMOLToy()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(500, 2, generator=g, dtype=torch.float64) - 0.5) * 24
    # points in both log valleys (x2 > 0) and on the Pareto set
    x2 = torch.rand(20, generator=g, dtype=torch.float64) * 8 + 0.2
    valley1 = torch.stack((-7.0 + 2.0 * torch.tanh(x2) + 1e-3, x2), -1)
    valley2 = torch.stack((7.0 + 2.0 * torch.tanh(x2) + 1e-3, x2), -1)
    x = torch.cat([x, valley1, valley2, toy.pareto_set(11)]).requires_grad_(True)
    f_ref = toy(x)
    rows = [torch.autograd.grad(f_ref[:, i].sum(), x, retain_graph=True)[0] for i in range(2)]
    f, J = TOY.toy_jacobian(x.detach())
    torch.testing.assert_close(f, f_ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(J, torch.stack(rows, 1), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("lambda1", [1.0, 100.0])
def test_predicted_limits_are_stationary_pareto_points(lambda1):
    # mini-batch MGDA with one task = SGD on (2/3) f1 + (1/3) f2; SIMOL = the weights p_tau r*_tau(x)
    toy = tm.problems.SIMOLToy()
    p = (2.0 / 3.0, 1.0 / 3.0)
    for x1, weights in ((7.0 / 3.0, None), (TOY.simol_limit_x1(p, lambda1, 1.0), "simol")):
        x = torch.tensor([x1, float(toy.optimal_x2(torch.tensor(x1)))], dtype=torch.float64)
        assert bool(toy.is_pareto_optimal(x, atol=1e-9))
        J = TOY.toy_jacobian(x)[1]
        a = torch.tensor(p, dtype=torch.float64)
        if weights == "simol":
            a = a * 1.0 / (1.0 + J.square().sum(-1) / lambda1)  # r* = lambda2 / (lambda2 + |g|^2 / lambda1)
        assert (a @ J).norm() < 1e-8 * J.norm()
    assert TOY.simol_limit_x1(p, 1.0, 1.0) == pytest.approx(6.1443, abs=1e-3)
    assert TOY.simol_limit_x1(p, 1e9, 1.0) == pytest.approx(7.0 / 3.0, abs=1e-5)  # r* -> 1: SIMOL -> SGD


def test_toy_runs_reach_the_front_at_their_predicted_points_and_simol_leaves_the_valley(tmp_path):
    # lambda1 = 10 puts SIMOL's limit (x1 = 3.19) away from mini-batch MGDA's (7/3). Start 0 is figure 1's
    # upper left, in task 1's log valley; start 1 lies near the front, right of both limits.
    cfg = TOY.Config(starts=[[-8.5, 7.5], [4.0, -8.0]], seeds=8, steps=4000, simol_lambda1=10.0, front_points=4001)
    res = tm.experiments.run_experiment("simol-toy", out=str(tmp_path), progress=False, config=cfg)
    rows = {(r["method"], r["start"]): r for r in res["summary"]["table"]}
    near = "(4, -8)"
    for m in TOY.METHODS:
        assert rows[m, near]["reached"] == "8/8" and rows[m, near]["max distance"] < cfg.tolerance
    assert rows["minibatch-mgda", near]["mean final x1"] == pytest.approx(7.0 / 3.0, abs=0.3)
    assert rows["simol", near]["predicted x1"] == pytest.approx(3.19, abs=0.01)
    assert rows["simol", near]["mean final x1"] == pytest.approx(rows["simol", near]["predicted x1"], abs=0.3)
    # full MGDA uses both gradients: no task draws, every seed ends at the same point
    mgda_x = torch.tensor(res["units"]["mgda"]["final_x"])
    assert torch.equal(mgda_x[:8], mgda_x[:1].expand(8, 2)) and torch.equal(mgda_x[8:], mgda_x[8:9].expand(8, 2))
    # the same task draws: SIMOL's weights take it out of the valley where mini-batch MGDA lingers
    valley = "(-8.5, 7.5)"
    reached = {m: int(rows[m, valley]["reached"].split("/")[0]) for m in ("minibatch-mgda", "simol")}
    assert reached["simol"] > reached["minibatch-mgda"]
    assert rows["simol", valley]["median distance"] < rows["minibatch-mgda", valley]["median distance"]
    unit = res["units"]["simol"]
    assert len(unit["trajectory_seed0"]) == cfg.steps // cfg.check_every + 1
    assert all(0.0 < w < 1.0 for pair in unit["final_weights"] for w in pair)  # r* < 1 where |g| > 0
    again = tm.experiments.run_experiment("simol-toy", out=str(tmp_path), progress=False, config=cfg)
    assert again["resumed"] == 1 and again["summary"]["table"] == res["summary"]["table"]


def test_toy_settings_of_the_last_unit_are_checked_before_the_first(tmp_path, monkeypatch):
    # the simol unit runs after the two MGDA units: its lambda and learning rate are checked before them
    def trained(*args, **kwargs):
        raise AssertionError("a unit ran before the config was checked")

    monkeypatch.setattr(tm.experiments.RunContext, "record", trained)
    for i, (bad, message) in enumerate([(dict(simol_lambda1=-1.0), "lambda1"), (dict(simol_lambda2=-1.0), "lambda2"),
                                        (dict(simol_lr=0.0), "simol_lr"), (dict(tolerance=0.0), "tolerance")]):
        cfg = TOY.Config(starts=[[4.0, -8.0]], seeds=1, steps=5, front_points=101, **bad)
        with pytest.raises(ValueError, match=message):
            tm.experiments.run_experiment("simol-toy", out=str(tmp_path / str(i)), progress=False, config=cfg)


# ---- few-shot classification ----------------------------------------------------------------------------------


def test_digit_splits():
    cfg = FS.Config()
    x = torch.arange(1797, dtype=torch.float32)[:, None, None, None]  # "images" that are their own index
    y = torch.arange(1797) % 10
    names = [str(d) for d in range(10)]
    tx, ty, vx, vy, tn, vn = FS._split(x, y, names, cfg, seed=0)
    train, test = set(tx.flatten().long().tolist()), set(vx.flatten().long().tolist())
    assert not train & test and len(train | test) == 1797  # disjoint images, all of them used
    assert tn == vn == names and abs(len(test) - 1797 / 2) <= 10
    assert torch.equal(y[vx.flatten().long()], vy)
    cfg.class_split = "classes"
    tx, ty, vx, vy, tn, vn = FS._split(x, y, names, cfg, seed=0)
    assert tn == ["0", "1", "2", "3", "4"] and vn == ["5", "6", "7", "8", "9"]
    assert set(ty.tolist()) == set(vy.tolist()) == set(range(5))
    assert torch.equal(y[vx.flatten().long()] - 5, vy)


def test_reweighter_starts_at_one_and_sees_each_class():
    N, K, Q = 3, 2, 4
    xs = torch.arange(N).repeat_interleave(K).float()[None, :, None, None, None].expand(2, N * K, 1, 16, 16)
    xq = torch.arange(N).repeat_interleave(Q).float()[None, :, None, None, None].expand(2, N * Q, 1, 16, 16)
    feats = FS.episode_features(xs, xq, N)
    assert feats.shape == (2, N, K + Q, 1, 16, 16)
    for c in range(N):  # every image of slot c belongs to class c (split_episode is class-major)
        assert bool((feats[:, c] == c).all())
    torch.manual_seed(0)
    net = FS.EpisodeReweighter(1, N, 16, channels=4, hidden=(8, 8))
    r = net(torch.randn(2, N, K + Q, 1, 16, 16))
    assert torch.equal(r, torch.ones(2))


def test_episode_accuracies_match_a_plain_loop():
    cfg = FS.Config(channels=4, maml_test_inner_steps=2, eval_chunk=2)
    data = FS.load_data(cfg, 0, torch.device("cpu"))
    _, test_sampler = FS._samplers(cfg, data, 1, 0)
    episodes = FS._episodes(data.test_x, test_sampler, range(5))
    for method in ("maml", "protonet"):
        learner = FS._learner(method, cfg, data, 0, torch.device("cpu"))
        acc = FS.episode_accuracies(learner, episodes, cfg)
        model = learner.maml.model
        for e in range(5):
            xs, ys, xq, yq = (t[e] for t in episodes)
            if method == "maml":  # plain autograd: 2 SGD steps on the support set, then the query
                names = [k for k, _ in model.named_parameters()]
                w = [p.detach().requires_grad_(True) for p in model.parameters()]
                for _ in range(2):
                    logits = torch.func.functional_call(model, dict(zip(names, w)), (xs,))
                    loss = nn.functional.cross_entropy(logits, ys)
                    w = [(a - cfg.maml_inner_lr * g).detach().requires_grad_(True)
                         for a, g in zip(w, torch.autograd.grad(loss, w))]
                pred = torch.func.functional_call(model, dict(zip(names, w)), (xq,)).argmax(-1)
            else:
                with torch.no_grad():
                    es, eq = model(xs), model(xq)
                protos = torch.stack([es[ys == c].mean(0) for c in range(cfg.n_way)])
                pred = torch.cdist(eq, protos).argmin(-1)
            assert float(acc[e]) == pytest.approx(float((pred == yq).float().mean()), abs=1e-6)


def test_fewshot_digits_learns_above_chance_reports_and_resumes(tmp_path):
    cfg = FS.Config(shots=[1], meta_steps=25, meta_batch=2, channels=16, reweight_channels=4, test_episodes=30,
                    test_query=5, timing_steps=1, timing_repeats=1)
    res = tm.experiments.run_experiment("simol-fewshot-digits", out=str(tmp_path), progress=False, config=cfg)
    summary = res["summary"]
    rows = {r["method"]: r for r in summary["table"]}
    assert list(rows) == cfg.methods and summary["chance %"] == 20.0
    # the same initial networks on the same meta-test episodes, before any outer step
    data = FS.load_data(cfg, 0, torch.device("cpu"))
    episodes = FS._episodes(data.test_x, FS._samplers(cfg, data, 1, 0)[1], range(cfg.test_episodes))
    for m, row in rows.items():
        untrained = 100.0 * float(FS.episode_accuracies(FS._learner(m, cfg, data, 0, torch.device("cpu")), episodes,
                                                        cfg).mean())
        assert row["accuracy %"] - row["ci95"] > 20.0, m  # above chance, beyond the confidence interval
        assert row["accuracy %"] > untrained + 5.0, (m, untrained)  # and the outer loop taught it something
        assert row["worst-10% %"] <= row["accuracy %"]
        assert row["paper accuracy %"] == FS.PAPER[m][1][0]
        unit = res["units"][f"{m} 1-shot seed 0"]
        assert len(unit["test_accuracies"]) == 30 and unit["train_loss"][-1] < unit["train_loss"][0]
    for m in ("maml-simol", "protonet-simol"):
        w = res["units"][f"{m} 1-shot seed 0"]["last_weights"]
        assert len(w) == 2 and all(v >= 0 for v in w)
    for v in FS.TIMED:
        assert summary[f"timing 1-shot {v} s/step"] > 0
    assert summary["timing 1-shot SIMOL/MAML"] == pytest.approx(
        summary["timing 1-shot maml-simol s/step"] / summary["timing 1-shot maml s/step"])
    again = tm.experiments.run_experiment("simol-fewshot-digits", out=str(tmp_path), progress=False, config=cfg)
    assert again["resumed"] == 1 and again["summary"]["table"] == summary["table"]


def _write_folder(root, classes, per_class=4, split=""):
    """Solid-colour images (sizes vary; PNG and JPEG) in ``root[/split]/<class>/``; colour of class j."""
    from PIL import Image

    colours = {}
    for j, name in enumerate(classes):
        d = root / split / name if split else root / name
        d.mkdir(parents=True)
        colour = (40 * j % 256, 255 - 30 * j, 100 + 20 * j)
        colours[name] = colour
        for i in range(per_class):
            Image.new("RGB", (10 + i, 12), colour).save(d / f"im{i}.png")
        (d / "notes.txt").write_text("not an image")
    return colours


def test_image_folder_data_and_run(tmp_path):
    root = tmp_path / "imgs"
    colours = _write_folder(root, ["b", "a", "d", "c", "f", "e"])
    cfg = FS.Config(data="image-folder", image_folder=str(root), class_split="classes", n_way=3, shots=[1],
                    n_query=2, test_query=2, image_size=16, channels=4, reweight_channels=4, meta_steps=3,
                    meta_batch=2, test_episodes=10, timing_repeats=0, methods=["protonet", "maml-simol"])
    data = FS.load_data(cfg, 0, torch.device("cpu"))
    assert data.train_classes == ["a", "b", "c"] and data.test_classes == ["d", "e", "f"]  # sorted, last half novel
    assert data.train_x.shape == (12, 3, 16, 16) and data.test_x.shape == (12, 3, 16, 16)
    assert torch.equal(data.train_y, torch.arange(3).repeat_interleave(4))
    # standardized with the meta-training statistics: undo it and find the classes' colours
    from torchmoo.zoo.data.image_folder import load_image_folder

    x, y, names = load_image_folder(root, 16)
    assert names == ["a", "b", "c", "d", "e", "f"] and x.shape == (24, 3, 16, 16)
    for j, name in enumerate(names):
        pixels = x[y == j]
        expected = torch.tensor(colours[name], dtype=torch.float32) / 255.0
        torch.testing.assert_close(pixels, expected[None, :, None, None].expand_as(pixels), atol=1e-6, rtol=0)
    res = tm.experiments.run_experiment("simol-fewshot-digits", out=str(tmp_path / "run"), progress=False, config=cfg)
    rows = {r["method"]: r for r in res["summary"]["table"]}
    assert rows["protonet"]["accuracy %"] > 100.0 / 3.0  # distinct colours: far above chance
    # the usual MiniImageNet export: train/ and test/ sub-folders are the two class sets
    split_root = tmp_path / "split"
    _write_folder(split_root, ["x1", "x2", "x3"], split="train")
    _write_folder(split_root, ["y1", "y2", "y3", "y4"], split="test")
    cfg.image_folder = str(split_root)
    data = FS.load_data(cfg, 0, torch.device("cpu"))
    assert data.train_classes == ["x1", "x2", "x3"] and data.test_classes == ["y1", "y2", "y3", "y4"]
    assert data.test_x.shape == (16, 3, 16, 16)


def test_image_folder_errors(tmp_path, monkeypatch):
    cfg = FS.Config(data="image-folder", image_folder=str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        FS.load_data(cfg, 0, torch.device("cpu"))
    (tmp_path / "empty").mkdir()
    cfg.image_folder = str(tmp_path / "empty")
    with pytest.raises(ValueError, match="no class sub-folder"):
        FS.load_data(cfg, 0, torch.device("cpu"))
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(ValueError, match="no image file"):
        FS.load_data(cfg, 0, torch.device("cpu"))
    monkeypatch.delenv(FS.FEWSHOT_ENV, raising=False)
    cfg.image_folder = None
    with pytest.raises(ValueError, match=FS.FEWSHOT_ENV):
        FS.load_data(cfg, 0, torch.device("cpu"))
    _write_folder(tmp_path / "few", ["a", "b", "c", "d"])
    cfg.image_folder = str(tmp_path / "few")
    with pytest.raises(ValueError, match="5-way episodes need 5"):
        FS.load_data(cfg, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="methods must be"):
        tm.experiments.run_experiment("simol-fewshot-digits", out=str(tmp_path / "bad"), progress=False,
                                      config=FS.Config(methods=["reptile"]))


def test_fewshot_unit_interrupted_mid_training_resumes_exactly(tmp_path, monkeypatch):
    """An interrupted training unit continues from its last checkpoint (every CHECKPOINT_EVERY outer steps)
    and ends with the numbers of an uninterrupted run: SIMOL's reweighting network and both optimizers
    are restored with the meta-learner."""
    monkeypatch.setattr(FS, "CHECKPOINT_EVERY", 2)
    cfg = FS.Config(shots=[1], methods=["maml-simol"], meta_steps=5, meta_batch=2, channels=4, reweight_channels=4,
                    reweight_hidden=[4], test_episodes=10, test_query=2, timing_repeats=0)
    data = FS.load_data(cfg, 0, torch.device("cpu"))
    monkeypatch.setattr(FS, "load_data", lambda *args: data)  # three runs: load and plot only once each
    monkeypatch.setattr(FS, "_plot", lambda *args: None)
    whole = tm.experiments.run_experiment("simol-fewshot-digits", out=str(tmp_path / "whole"), progress=False,
                                          config=cfg)
    real = FS._step
    calls = {"n": 0, "cut": True}

    def counted(*args):
        calls["n"] += 1
        if calls["cut"] and calls["n"] == 4:  # outer step 4: the checkpoint after step 2 is on disk
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(FS, "_step", counted)
    with pytest.raises(KeyboardInterrupt):
        tm.experiments.run_experiment("simol-fewshot-digits", out=str(tmp_path / "cut"), progress=False, config=cfg)
    assert list((tmp_path / "cut" / "checkpoints").iterdir())
    calls.update(n=0, cut=False)
    resumed = tm.experiments.run_experiment("simol-fewshot-digits", out=str(tmp_path / "cut"), progress=False,
                                            config=cfg)
    assert calls["n"] == 3  # steps 3 to 5 only
    unit = "maml-simol 1-shot seed 0"
    for key in ("test_accuracies", "train_loss", "mean_weight", "last_weights"):
        assert resumed["units"][unit][key] == whole["units"][unit][key], key


# ---- what the tables report ------------------------------------------------------------------------------------


def test_toy_minibatch_mgda_with_one_task_is_adam_on_it_and_the_table_groups_runs_by_start(tmp_path):
    # task 1 is drawn with probability ~1: mini-batch MGDA is Adam on f_1 alone, the same for every seed
    starts = [[4.0, -8.0], [-8.5, -5.0]]
    cfg = TOY.Config(methods=["minibatch-mgda"], starts=starts, seeds=3, steps=60, check_every=20,
                     task_probabilities=[1.0, 1e-12], front_points=2001)
    res = tm.experiments.run_experiment("simol-toy", out=str(tmp_path), progress=False, config=cfg)
    x = torch.tensor(starts, dtype=torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=cfg.lr)
    traj = [x.detach().tolist()]
    for step in range(cfg.steps):
        opt.zero_grad()
        x.grad = TOY.toy_jacobian(x.detach())[1][:, 0].clone()
        opt.step()
        if (step + 1) % cfg.check_every == 0:
            traj.append(x.detach().tolist())
    unit = res["units"]["minibatch-mgda"]
    final = torch.tensor(unit["final_x"], dtype=torch.float64)  # run k: start k // seeds, seed k % seeds
    torch.testing.assert_close(final, x.detach().repeat_interleave(3, 0))
    torch.testing.assert_close(torch.tensor(unit["trajectory_seed0"], dtype=torch.float64),
                               torch.tensor(traj, dtype=torch.float64))
    front = TOY._Front(cfg.front_points)
    for m in cfg.methods:
        u = res["units"][m]
        d = front.objective_distance(TOY.toy_jacobian(torch.tensor(u["final_x"], dtype=torch.float64))[0])
        rows = [r for r in res["summary"]["table"] if r["method"] == m]
        assert [r["start"] for r in rows] == ["(4, -8)", "(-8.5, -5)"]
        for k, r in enumerate(rows):
            dk = d[3 * k:3 * k + 3]
            assert r["median distance"] == pytest.approx(float(dk.median())) and r["max distance"] == pytest.approx(
                float(dk.max()))
            xk = torch.tensor(u["final_x"])[3 * k:3 * k + 3, 0]
            assert r["mean final x1"] == pytest.approx(float(xk.mean()))
            hit = torch.tensor(u["reached_at"][3 * k:3 * k + 3])
            assert r["reached"] == f"{int((hit >= 0).sum())}/3"
    # the predicted limit of mini-batch MGDA: the Pareto point of the weights (p, 1 - p)
    row = next(r for r in res["summary"]["table"] if r["method"] == "minibatch-mgda")
    assert row["predicted x1"] == pytest.approx(7.0)


def test_toy_draws_are_shared_by_the_starts_and_differ_between_seeds(tmp_path):
    # the probabilities are normalized: (2, 4) draws task 1 with probability 1/3
    cfg = TOY.Config(methods=["minibatch-mgda"], starts=[[4.0, -8.0], [4.0, -8.0]], seeds=4, steps=40,
                     check_every=40, front_points=2001, task_probabilities=[2.0, 4.0])
    res = tm.experiments.run_experiment("simol-toy", out=str(tmp_path), progress=False, config=cfg)
    unit = res["units"]["minibatch-mgda"]
    x = torch.tensor(unit["final_x"])
    assert torch.equal(x[:4], x[4:])  # the same seed, the same task draws, at every start
    assert len({tuple(r) for r in x[:4].tolist()}) > 1  # four seeds, four streams
    d = torch.tensor(unit["objective_distance"][:4], dtype=torch.float64)
    row = res["summary"]["table"][0]
    assert row["max distance"] == pytest.approx(float(d.max())) and row["median distance"] == pytest.approx(
        float(d.median()))
    assert row["predicted x1"] == pytest.approx(7.0 * (2.0 / 6.0 - 4.0 / 6.0))


def test_fewshot_summary_pools_the_seeds(monkeypatch):
    """accuracy and its CI over the episodes of all seeds; worst-10% per seed, then averaged."""
    cfg = FS.Config(n_way=4)
    a = [0.2 * (i % 5) for i in range(20)]
    b = [0.5 + 0.025 * i for i in range(20)]
    runs = [{"test_accuracies": a, "seconds_per_step": 1.0}, {"test_accuracies": b, "seconds_per_step": 3.0}]
    monkeypatch.setattr(FS, "_plot", lambda *args: None)
    s = FS._summary(cfg, {("maml", 1): runs}, {}, None)
    (row,) = s["table"]
    pooled = 100.0 * torch.tensor(a + b, dtype=torch.float64)
    assert row["accuracy %"] == pytest.approx(float(pooled.mean()))
    assert row["ci95"] == pytest.approx(1.96 * float(pooled.std()) / math.sqrt(40))
    worst_a, worst_b = sorted(a)[:2], sorted(b)[:2]  # 10% of 20 episodes
    assert row["worst-10% %"] == pytest.approx(100.0 * (sum(worst_a) / 2 + sum(worst_b) / 2) / 2)
    w = 100.0 * torch.tensor(worst_a + worst_b, dtype=torch.float64)
    assert row["worst-10% ci95"] == pytest.approx(1.96 * float(w.std()) / 2.0)
    assert row["seconds/step"] == pytest.approx(2.0) and s["chance %"] == 25.0
    assert row["paper accuracy %"] == FS.PAPER["maml"][1][0] and row["paper worst-10% %"] == FS.PAPER["maml"][1][1]


def test_fewshot_data_is_standardized_with_the_meta_training_images():
    cfg = FS.Config(class_split="classes")
    data = FS.load_data(cfg, 0, torch.device("cpu"))
    from torchmoo.zoo.data.digits import load_sklearn_digits
    from torchmoo.zoo.data.image_folder import resize_square

    digits, labels = load_sklearn_digits()
    x = resize_square((digits / 16.0).unsqueeze(1), cfg.image_size)
    tr, te = x[labels < 5], x[labels >= 5]
    mean, std = tr.mean(), tr.std()
    torch.testing.assert_close(data.train_x, (tr - mean) / std)
    torch.testing.assert_close(data.test_x, (te - mean) / std)
    assert torch.equal(data.test_y, labels[labels >= 5] - 5)


def test_toy_simol_ascent_uses_the_gradient_where_the_config_says(tmp_path, monkeypatch):
    # Algorithm 1 ("next": the gradient at x^{s+1}) and Eq. 13 ("current": at x^s) give different weights
    monkeypatch.setattr(TOY, "_plot", lambda *args: None)
    base = dict(methods=["simol"], starts=[[4.0, -8.0]], seeds=2, steps=30, check_every=30, front_points=101,
                simol_lambda1=1.0)
    w = {}
    for at in ("next", "current"):
        cfg = TOY.Config(simol_theta_at=at, **base)
        res = tm.experiments.run_experiment("simol-toy", out=str(tmp_path / at), progress=False, config=cfg)
        w[at] = torch.tensor(res["units"]["simol"]["final_weights"])
    assert w["next"].shape == (2, 2) and not torch.allclose(w["next"], w["current"], rtol=1e-6, atol=0)


def _fake_episode_data(n_train: int = 50, n_test: int = 40) -> FS.EpisodeData:
    return FS.EpisodeData(torch.randn(n_train, 1, 16, 16), torch.arange(n_train) % 5, torch.randn(n_test, 1, 16, 16),
                          torch.arange(n_test) % 5, [str(c) for c in range(5)], [str(c) for c in range(5)])


def test_fewshot_samplers_and_initializations():
    cfg = FS.Config(channels=4, reweight_channels=4, meta_steps=3, meta_batch=2, n_query=2, test_query=3,
                    test_episodes=10)
    data = _fake_episode_data()
    train, test = FS._samplers(cfg, data, 1, 0)
    assert (train.n_way, train.k_shot, train.n_query) == (5, 1, 2)  # meta-training episodes: n_query
    assert (test.n_way, test.k_shot, test.n_query) == (5, 1, 3)  # meta-test episodes: test_query
    # every method of a seed starts from the same backbone, whatever was drawn before
    torch.manual_seed(123)
    a = FS._learner("maml", cfg, data, 0, torch.device("cpu")).maml.model
    torch.rand(5)
    b = FS._learner("protonet-simol", cfg, data, 0, torch.device("cpu")).maml.model
    backbone = [p for n, p in a.named_parameters() if n.startswith("0.")]
    assert len(backbone) == len(list(b.parameters())) > 0
    assert all(torch.equal(p, q) for p, q in zip(backbone, b.parameters()))
    c = FS._learner("maml", cfg, data, 1, torch.device("cpu")).maml.model
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
