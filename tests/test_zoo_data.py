"""Data sets of the zoo, built from tiny IDX and CSV files written here and from scikit-learn's digits."""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from torchmoo.zoo import data as D
from torchmoo.zoo.data.census import UCI_CENSUS_COLUMNS
from torchmoo.zoo.data.compose import nearest_indices

MEAN, STD = 0.1307, 0.3081


# ----------------------------------------------------------------------------------- helpers
def reference_compose(left: np.ndarray, right: np.ndarray, pos: np.ndarray, shift: int = 2) -> np.ndarray:
    """MultiMNIST by the book: add both items on a (d + 4 shift)^2 canvas, clip to 255, resize to d x d
    by nearest neighbour at pixel centres (PIL's NEAREST), one image at a time."""
    d = left.shape[0]
    size = d + 4 * shift
    canvas = np.zeros((size, size), dtype=np.int64)
    (r0, c0), (r1, c1) = pos
    canvas[r0 : r0 + d, c0 : c0 + d] += left
    canvas[r1 : r1 + d, c1 : c1 + d] += right
    canvas = np.clip(canvas, 0, 255)
    idx = [math.floor((i + 0.5) * size / d) for i in range(d)]
    return canvas[np.ix_(idx, idx)].astype(np.uint8)


def write_mnist(folder, split: str, images: torch.Tensor, labels: torch.Tensor, compress: bool = False) -> None:
    stem = "train" if split == "train" else "t10k"
    suffix = ".gz" if compress else ""
    folder.mkdir(parents=True, exist_ok=True)
    D.write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images, compress=compress)
    D.write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels, compress=compress)


def fake_mnist(n: int, seed: int, offset: int = 0):
    """n random 28 x 28 'items' with labels (offset + i) % 10, so every label occurs."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    images[:, :2] = 0  # a little structure: blank top rows, as real digits have margins
    labels = ((torch.arange(n) + offset) % 10).to(torch.uint8)
    return images, labels


@pytest.fixture
def mnist_dir(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder, "train", *fake_mnist(12, 0))
    write_mnist(folder, "test", *fake_mnist(5, 1))
    return folder


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    for var in (D.MNIST_ENV, D.FASHION_MNIST_ENV, D.CENSUS_ENV, D.SARCOS_ENV):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, dtype, compress):
    t = (torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0)) * 50).to(dtype)
    path = tmp_path / "a.idx"
    D.write_idx(path, t, compress=compress)
    back = D.read_idx(path)
    assert back.dtype == dtype and torch.equal(back, t)


def test_idx_header_is_the_published_format(tmp_path):
    # magic 0x00000803 for uint8 images, then big-endian dims (the MNIST files' header)
    path = tmp_path / "x"
    D.write_idx(path, torch.zeros(2, 28, 28, dtype=torch.uint8))
    raw = path.read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and struct.unpack(">3I", raw[4:16]) == (2, 28, 28)
    assert len(raw) == 16 + 2 * 28 * 28


def _bytes_file(tmp_path, name, payload: bytes):
    p = tmp_path / name
    p.write_bytes(payload)
    return p


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x50\x4b\x03\x04rest", "not an IDX file"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated header"),
        (b"\x00\x00\x08\x02" + struct.pack(">2I", 2, 3) + bytes(5), r"truncated: .*shape \(2, 3\).*6 bytes.*only 5"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes(4), "2 unexpected bytes"),
        (b"\x1f\x8b\x08\x00garbage", "gzip-compressed data is truncated or corrupt"),
    ],
)
def test_idx_errors_name_the_file_and_the_problem(tmp_path, payload, message):
    path = _bytes_file(tmp_path, "broken-images-idx3-ubyte", payload)
    with pytest.raises(D.IDXError, match=message) as info:
        D.read_idx(path)
    assert "broken-images-idx3-ubyte" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_idx_truncated_gzip_member(tmp_path):
    full = gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 1000) + bytes(1000))
    path = _bytes_file(tmp_path, "cut.gz", full[: len(full) // 2])
    with pytest.raises(D.IDXError, match="cut.gz.*truncated or corrupt"):
        D.read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        D.read_idx(tmp_path / "nothere")


# ------------------------------------------------------------------------------- composition
def test_compose_matches_the_reference_construction():
    g = torch.Generator().manual_seed(3)
    left = torch.randint(0, 256, (40, 28, 28), generator=g, dtype=torch.uint8)
    right = torch.randint(0, 256, (40, 28, 28), generator=g, dtype=torch.uint8)
    images, pos = D.compose_pairs(left, right, generator=torch.Generator().manual_seed(1))
    assert images.shape == (40, 28, 28) and images.dtype == torch.uint8
    for n in range(40):
        expected = reference_compose(left[n].numpy(), right[n].numpy(), pos[n].numpy())
        np.testing.assert_array_equal(images[n].numpy(), expected)


def test_compose_positions_follow_the_paper():
    # up to 2 pixels each way from (2, 2) upper-left and (6, 6) lower-right on the 36 x 36 canvas
    items = torch.zeros(4000, 28, 28, dtype=torch.uint8)
    _, pos = D.compose_pairs(items, items, generator=torch.Generator().manual_seed(0))
    assert pos[:, 0].min() == 0 and pos[:, 0].max() == 4
    assert pos[:, 1].min() == 4 and pos[:, 1].max() == 8
    assert not (pos[:, 0] == pos[:, 1]).all(dim=1).any()  # never one item exactly under the other
    # each of the 5 offsets along each axis is drawn, roughly uniformly
    counts = torch.bincount(pos[:, 0, 0], minlength=5).float()
    assert counts.min() > 0.15 * 4000


def test_nearest_resize_is_pils():
    Image = pytest.importorskip("PIL.Image")
    canvas = np.random.default_rng(0).integers(0, 256, (36, 36)).astype(np.uint8)
    ours = canvas[np.ix_(nearest_indices(36, 28).numpy(), nearest_indices(36, 28).numpy())]
    theirs = np.asarray(Image.fromarray(canvas).resize((28, 28), resample=Image.NEAREST))
    np.testing.assert_array_equal(ours, theirs)


def test_compose_is_deterministic_and_validates():
    items = torch.randint(0, 256, (6, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a = D.compose_pairs(items, items.flip(0), generator=torch.Generator().manual_seed(5))
    b = D.compose_pairs(items, items.flip(0), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(TypeError, match="uint8"):
        D.compose_pairs(items.float(), items.float())
    with pytest.raises(ValueError, match="same shape"):
        D.compose_pairs(items, items[:3])
    with pytest.raises(ValueError, match="one device"):
        D.compose_pairs(items, items.to("meta"))


def test_compose_works_on_the_items_device():
    """Items on another device (here "meta", which checks devices as CUDA does) are composed there: the
    gather masks, the corners and the output follow the items instead of staying on the CPU."""
    items = torch.randint(0, 256, (5, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    images, pos = D.compose_pairs(items.to("meta"), items.flip(0).to("meta"),
                                  generator=torch.Generator().manual_seed(5), out_size=20)
    assert images.device.type == "meta" and images.shape == (5, 20, 20) and images.dtype == torch.uint8
    assert pos.device.type == "meta" and pos.shape == (5, 2, 2)


@pytest.mark.cuda
def test_compose_on_cuda_matches_the_cpu():
    """CUDA items give the CPU's images and positions (the moves come from the same CPU generator)."""
    g = torch.Generator().manual_seed(3)
    left = torch.randint(0, 256, (300, 28, 28), generator=g, dtype=torch.uint8)
    right = torch.randint(0, 256, (300, 28, 28), generator=g, dtype=torch.uint8)
    images, pos = D.compose_pairs(left, right, generator=torch.Generator().manual_seed(1))
    images_c, pos_c = D.compose_pairs(left.cuda(), right.cuda(), generator=torch.Generator().manual_seed(1))
    assert images_c.device.type == "cuda" and pos_c.device.type == "cuda"
    assert torch.equal(images_c.cpu(), images) and torch.equal(pos_c.cpu(), pos)


# ---------------------------------------------------------------------------------- MultiMNIST
def test_multimnist_from_idx_files(mnist_dir):
    images, labels = D.read_idx(mnist_dir / "train-images-idx3-ubyte"), D.read_idx(mnist_dir / "train-labels-idx1-ubyte")
    ds = D.MultiMNIST(mnist_dir, split="train", seed=0)
    assert len(ds) == 12
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.shape == (2,) and y.dtype == torch.int64
    # every source image is the upper-left item once; the lower-right items are a permutation
    assert torch.equal(ds.sources[:, 0], torch.arange(12))
    assert sorted(ds.sources[:, 1].tolist()) == list(range(12))
    assert torch.equal(ds.targets[:, 0], labels.long())
    assert torch.equal(ds.targets[:, 1], labels.long()[ds.sources[:, 1]])
    for n in range(12):
        raw = reference_compose(images[n].numpy(), images[ds.sources[n, 1]].numpy(), ds.positions[n].numpy())
        np.testing.assert_array_equal(ds.images[n].numpy(), raw)
        torch.testing.assert_close(ds[n][0][0], (torch.from_numpy(raw).float() / 255 - MEAN) / STD)
    X, Y = ds.tensors()
    assert X.shape == (12, 1, 28, 28) and torch.equal(Y, ds.targets)
    test = D.MultiMNIST(mnist_dir, split="test")
    assert len(test) == 5


def test_multimnist_is_deterministic_under_a_seed(mnist_dir):
    a, b, c = D.MultiMNIST(mnist_dir, seed=4), D.MultiMNIST(mnist_dir, seed=4), D.MultiMNIST(mnist_dir, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not (torch.equal(a.positions, c.positions) and torch.equal(a.sources, c.sources))


def test_multimnist_env_var_gzip_and_torchvision_layout(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "MNIST" / "raw"
    imgs, labels = fake_mnist(7, 2)
    write_mnist(folder, "train", imgs, labels, compress=True)
    monkeypatch.setenv(D.MNIST_ENV, str(tmp_path / "data"))
    ds = D.MultiMNIST()
    assert len(ds) == 7 and torch.equal(ds.targets[:, 0], labels.long())


def test_multimnist_missing_path_says_what_to_set(tmp_path):
    with pytest.raises(D.DataNotFoundError, match=r"root=PATH.*TORCHMOO_MNIST_DIR"):
        D.MultiMNIST()
    with pytest.raises(D.DataNotFoundError, match="does not exist"):
        D.MultiMNIST(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataNotFoundError, match=r"train-images-idx3-ubyte.*TORCHMOO_MNIST_DIR"):
        D.MultiMNIST(tmp_path / "empty")
    with pytest.raises(D.DataNotFoundError, match="TORCHMOO_FASHION_MNIST_DIR"):
        D.MultiFashion()
    with pytest.raises(D.DataNotFoundError, match=r"mnist_root=PATH"):
        D.MultiFashionMNIST()


def test_multimnist_rejects_inconsistent_files(tmp_path):
    bad = tmp_path / "shape"
    write_mnist(bad, "train", torch.zeros(3, 10, 10, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(D.IDXError, match=r"\(N, 28, 28\).*\(3, 10, 10\)"):
        D.MultiMNIST(bad)
    count = tmp_path / "count"
    write_mnist(count, "train", torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.uint8))
    with pytest.raises(D.IDXError, match="4 labels for the 3 images"):
        D.MultiMNIST(count)
    big = tmp_path / "label"
    write_mnist(big, "train", torch.zeros(2, 28, 28, dtype=torch.uint8), torch.tensor([1, 12], dtype=torch.uint8))
    with pytest.raises(D.IDXError, match="0..9, found 12"):
        D.MultiMNIST(big)
    trunc = tmp_path / "trunc"
    write_mnist(trunc, "train", *fake_mnist(3, 0))
    path = trunc / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(D.IDXError, match=r"train-images-idx3-ubyte: truncated"):
        D.MultiMNIST(trunc)
    with pytest.raises(ValueError, match="split"):
        D.MultiMNIST(trunc, split="val")


def test_multifashion_and_multifashionmnist(tmp_path, monkeypatch):
    mnist, fashion = tmp_path / "m", tmp_path / "f"
    m_img, m_lab = fake_mnist(9, 10)
    f_img, f_lab = fake_mnist(6, 11, offset=3)
    write_mnist(mnist, "train", m_img, m_lab)
    write_mnist(fashion, "train", f_img, f_lab)
    monkeypatch.setenv(D.FASHION_MNIST_ENV, str(fashion))
    mf = D.MultiFashion()
    assert len(mf) == 6 and torch.equal(mf.targets[:, 0], f_lab.long())
    mix = D.MultiFashionMNIST(mnist_root=mnist)
    assert len(mix) == 9
    # left item from MNIST, right item from Fashion-MNIST (six sources, used for nine images)
    assert torch.equal(mix.targets[:, 0], m_lab.long())
    assert torch.equal(mix.targets[:, 1], f_lab.long()[mix.sources[:, 1]])
    assert set(mix.sources[:6, 1].tolist()) == set(range(6))
    for n in range(9):
        raw = reference_compose(m_img[n].numpy(), f_img[mix.sources[n, 1]].numpy(), mix.positions[n].numpy())
        np.testing.assert_array_equal(mix.images[n].numpy(), raw)


def test_multimnist_subset(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder, "train", *fake_mnist(40, 7))
    full = D.MultiMNIST(folder, seed=2)
    sub = D.MultiMNISTSubset(folder, size=16, seed=2)
    assert len(sub) == 16 and sub[0][0].shape == (1, 14, 14)
    assert len(set(sub.indices.tolist())) == 16
    # each subset image is the 2 x 2 average of its MultiMNIST image, labels carried along
    chosen = full.images[sub.indices].float()
    pooled = chosen.reshape(16, 14, 2, 14, 2).mean(dim=(2, 4))
    torch.testing.assert_close(sub.images, pooled)
    assert torch.equal(sub.targets, full.targets[sub.indices])
    torch.testing.assert_close(sub[3][0][0], (pooled[3] / 255 - MEAN) / STD)
    with pytest.raises(ValueError, match=r"size must be an int in \[1, 40\]"):
        D.MultiMNISTSubset(folder, size=41)


# --------------------------------------------------------------------------------- MultiDigits
@pytest.fixture(scope="module")
def sk_digits():
    """scikit-learn's bundled digits (images (1797, 8, 8), labels), read independently of the zoo."""
    datasets = pytest.importorskip("sklearn.datasets")
    bunch = datasets.load_digits()
    return bunch.images, bunch.target


@pytest.fixture(scope="module")
def digits(sk_digits):
    return D.MultiDigits("train", seed=0), D.MultiDigits("test", seed=0)


def test_render_digits_blocks():
    pytest.importorskip("sklearn")
    d = torch.randint(0, 17, (3, 8, 8), generator=torch.Generator().manual_seed(0)).float()
    frames = D.render_digits(d)
    assert frames.shape == (3, 28, 28) and frames.dtype == torch.uint8
    assert frames[:, :2].sum() == 0 and frames[:, -2:].sum() == 0 and frames[:, :, :2].sum() == 0
    for i in range(8):
        for j in range(8):
            block = frames[:, 2 + 3 * i : 5 + 3 * i, 2 + 3 * j : 5 + 3 * j]
            expected = torch.round(d[:, i, j] * 255 / 16).to(torch.uint8)
            assert torch.equal(block, expected.view(3, 1, 1).expand(3, 3, 3))


def test_multidigits_shapes_labels_and_splits(digits, sk_digits):
    train, test = digits
    assert (len(train), len(test)) == (1438, 359)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.shape == (2,) and y.dtype == torch.int64
    for ds in digits:
        assert ds.targets.min() >= 0 and ds.targets.max() <= 9
        assert set(ds.targets[:, 0].tolist()) == set(range(10)) and set(ds.targets[:, 1].tolist()) == set(range(10))
    # disjoint source digits; labels are the sklearn labels of the sources
    assert not set(train.sources.flatten().tolist()) & set(test.sources.flatten().tolist())
    target = torch.as_tensor(sk_digits[1])
    assert torch.equal(train.targets, target[train.sources])
    # normalised with the training split's statistics
    X, _ = train.tensors()
    assert abs(float(X.mean())) < 1e-4 and abs(float(X.std()) - 1) < 1e-3
    assert (test.mean, test.std) == (train.mean, train.std)


def test_multidigits_digits_are_where_they_should_be(digits, sk_digits):
    # every image is rebuilt from the raw 8 x 8 sources: scaled to 0..255, 3 x 3 blocks in a 28 x 28
    # frame, placed at the recorded corners of the 36 x 36 canvas, resized as MultiMNIST
    train, _ = digits
    raw = sk_digits[0]
    for n in range(0, len(train), 7):
        frames = [np.pad(np.kron(np.round(raw[s] * 255 / 16), np.ones((3, 3))), 2) for s in train.sources[n].tolist()]
        expected = reference_compose(frames[0].astype(np.int64), frames[1].astype(np.int64), train.positions[n].numpy())
        np.testing.assert_array_equal(train.images[n].numpy(), expected)
    # corners as in MultiMNIST: upper-left item in [0, 4], lower-right item in [4, 8] on each axis
    pos = train.positions
    assert pos[:, 0].min() == 0 and pos[:, 0].max() == 4 and pos[:, 1].min() == 4 and pos[:, 1].max() == 8
    # the top band of every image (canvas rows 0..3, above any lower-right item) shows only the upper-left
    # digit: the 8 x 8 digit's first row lands at canvas rows corner + 2 .. corner + 4
    band = nearest_indices(36, 28) < 4
    for n in range(0, len(train), 11):
        r, c = train.positions[n, 0].tolist()
        frame = np.pad(np.kron(np.round(raw[train.sources[n, 0]] * 255 / 16), np.ones((3, 3))), 2)
        canvas = np.zeros((36, 36))
        canvas[r : r + 28, c : c + 28] = frame
        idx = nearest_indices(36, 28).numpy()
        np.testing.assert_array_equal(train.images[n].numpy()[band.numpy()], canvas[np.ix_(idx, idx)][band.numpy()])


def test_multidigits_is_deterministic(digits):
    train, _ = digits
    again = D.MultiDigits("train", seed=0)
    assert torch.equal(again.images, train.images) and torch.equal(again.targets, train.targets)
    other = D.MultiDigits("train", seed=1)
    assert not torch.equal(other.sources, train.sources)
    more = D.MultiDigits("train", seed=0, num_images=3000)
    assert len(more) == 3000 and set(more.sources[:, 0].tolist()) == set(train.sources[:, 0].tolist())
    with pytest.raises(ValueError, match="test_fraction"):
        D.MultiDigits(test_fraction=1.0)


# -------------------------------------------------------------------------------------- Census
EDUCATION = ["Children", "High school graduate", "Bachelors degree(BA AB BS)", "Some college but no degree",
             "10th grade", "Doctorate degree(PhD EdD)"]
COLLEGE = {"Bachelors degree(BA AB BS)": 1, "Some college but no degree": 1, "Doctorate degree(PhD EdD)": 1}
MARITAL = ["Never married", "Married-civilian spouse present", "Divorced"]


def census_rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        row = []
        for col in UCI_CENSUS_COLUMNS:
            if col == "age":
                row.append(str(int(rng.integers(0, 90))))
            elif col == "education":
                row.append(EDUCATION[rng.integers(len(EDUCATION))])
            elif col == "marital_stat":
                row.append(MARITAL[rng.integers(len(MARITAL))])
            elif col in ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
                         "num_persons_worked_for_employer", "weeks_worked_in_year", "instance_weight"):
                row.append(str(float(rng.integers(0, 100))))
            elif col == "sex":
                row.append(["Male", "Female"][rng.integers(2)])
            elif col == "year":
                row.append(["94", "95"][rng.integers(2)])
            else:
                row.append(f"{col[:3]}-{rng.integers(3)}")
        rows.append(row)
    return rows


def write_csv(path, rows, header=None, sep=", "):
    with open(path, "w") as f:
        if header:
            f.write(sep.join(header) + "\n")
        for r in rows:
            f.write(sep.join(r) + "\n")
    return path


def test_census_from_the_uci_layout(tmp_path):
    rows = census_rows(30, 0)
    write_csv(tmp_path / "census-income.data", rows)
    test_rows = census_rows(8, 1)
    test_rows[0][UCI_CENSUS_COLUMNS.index("sex")] = "Unknown"  # a category the training file lacks
    write_csv(tmp_path / "census-income.test", test_rows)
    train = D.CensusIncome(tmp_path)
    assert len(train) == 30 and train.targets.shape == (30, 3)
    col = {c: i for i, c in enumerate(UCI_CENSUS_COLUMNS)}
    for k, r in enumerate(rows):
        assert train.targets[k].tolist() == [
            int(int(r[col["age"]]) >= 40), COLLEGE.get(r[col["education"]], 0), int(r[col["marital_stat"]] == "Never married")
        ]
    enc = train.encoding
    names = enc.feature_names()
    # no task column and no sampling weight among the features; 6 numeric columns standardised
    assert not any(n.split("=")[0] in ("age", "education", "marital_stat", "instance_weight") for n in names)
    assert [c for c, _, _ in enc.continuous] == ["wage_per_hour", "capital_gains", "capital_losses",
                                                "dividends_from_stocks", "num_persons_worked_for_employer",
                                                "weeks_worked_in_year"]
    X, _ = train.tensors()
    torch.testing.assert_close(X[:, :6].mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(X[:, :6].std(0, unbiased=False), torch.ones(6), atol=1e-5, rtol=0)
    # (value - mean) / std of the training file, column by column
    for j, (name, mean, std) in enumerate(enc.continuous):
        raw = torch.tensor([float(r[col[name]]) for r in rows], dtype=torch.float64)
        assert (mean, std) == pytest.approx((float(raw.mean()), float(raw.std(unbiased=False))), rel=1e-12)
        torch.testing.assert_close(X[:, j].double(), (raw - mean) / std, atol=1e-6, rtol=0)
    # exactly one hot per categorical column
    offset = 6
    for _, cats in enc.categorical:
        assert torch.all(X[:, offset : offset + len(cats)].sum(1) == 1)
        offset += len(cats)
    assert offset == train.num_features == enc.num_features
    test = D.CensusIncome(tmp_path, split="test", encoding=enc)
    assert test.num_features == train.num_features
    # the test file is encoded with the training statistics, not its own
    for j, (name, mean, std) in enumerate(enc.continuous):
        raw = torch.tensor([float(r[col[name]]) for r in test_rows], dtype=torch.float64)
        torch.testing.assert_close(test.features[:, j].double(), (raw - mean) / std, atol=1e-6, rtol=0)
    sex = [c for c, _ in enc.categorical].index("sex")
    start = 6 + sum(len(c) for _, c in enc.categorical[:sex])
    assert test.features[0, start : start + 2].sum() == 0  # unseen category: all zeros
    assert test.features[1, start : start + 2].sum() == 1


def test_census_with_a_header_and_env_var(tmp_path, monkeypatch):
    header = ["Age", "Education", "Marital stat", "Sex", "Capital gains"]
    rows = [["41", "Masters degree(MA MS MEng MEd MSW MBA)", "Never married", "Female", "10"],
            ["12", "Children", "Never married", "Male", "0"],
            ["39", "High school graduate", "Divorced", "Male", "5"]]
    write_csv(tmp_path / "train.csv", rows, header, sep=",")
    monkeypatch.setenv(D.CENSUS_ENV, str(tmp_path))
    ds = D.CensusIncome()
    assert ds.targets.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ds.num_features == 1 + 2  # capital_gains, sex=Female, sex=Male


def test_census_errors(tmp_path):
    with pytest.raises(D.DataNotFoundError, match=r"path=PATH.*TORCHMOO_CENSUS_DIR"):
        D.CensusIncome()
    p = write_csv(tmp_path / "a.csv", [["41", "Never married"]], ["age", "marital stat"], sep=",")
    with pytest.raises(D.CSVFormatError, match=r"a.csv: missing column\(s\) education"):
        D.CensusIncome(p)
    p = write_csv(tmp_path / "b.csv", [["41", "PhD", "Never married"]], ["age", "education", "marital stat"], sep=",")
    with pytest.raises(D.CSVFormatError, match=r"b.csv, line 2: education 'PhD'"):
        D.CensusIncome(p)
    p = write_csv(tmp_path / "c.csv", [["old", "Children", "Never married"]], ["age", "education", "marital stat"], sep=",")
    with pytest.raises(D.CSVFormatError, match=r"c.csv, line 2: column 'age' must hold finite numbers, found 'old'"):
        D.CensusIncome(p)
    rows = census_rows(3, 0)
    rows[2] = rows[2][:-1]
    p = write_csv(tmp_path / "d.data", rows)
    with pytest.raises(D.CSVFormatError, match=r"d.data, line 3: 41 fields where the file has 42 columns"):
        D.CensusIncome(p)
    p = write_csv(tmp_path / "e.csv", [["1", "2", "3"]])
    with pytest.raises(D.CSVFormatError, match="e.csv.*not a header"):
        D.CensusIncome(p)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(D.CSVFormatError, match="empty"):
        D.CensusIncome(tmp_path / "empty.csv")


# -------------------------------------------------------------------------------------- SARCOS
def test_sarcos_positional_and_standardised(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(25, 28))
    write_csv(tmp_path / "sarcos_inv.csv", [[repr(float(v)) for v in row] for row in data], sep=",")
    write_csv(tmp_path / "sarcos_inv_test.csv", [[repr(float(v)) for v in row] for row in data[:5] * 2], sep=",")
    train = D.Sarcos(tmp_path)
    x, y = train[0]
    assert x.shape == (21,) and y.shape == (7,) and len(train) == 25
    X, Y = train.tensors()
    torch.testing.assert_close(X.mean(0), torch.zeros(21), atol=1e-5, rtol=0)
    torch.testing.assert_close(Y.std(0, unbiased=False), torch.ones(7), atol=1e-5, rtol=0)
    # the test file is standardised with the training statistics
    test = D.Sarcos(tmp_path, split="test", stats=train.stats)
    expected = (torch.from_numpy(data[:5, 21:] * 2) - train.stats.y_mean) / train.stats.y_std
    torch.testing.assert_close(test.targets, expected.float())
    raw = D.Sarcos(tmp_path, standardize=False)
    torch.testing.assert_close(raw.inputs, torch.from_numpy(data[:, :21]).float())


def test_sarcos_named_columns_and_errors(tmp_path, monkeypatch):
    header = [f"q{i}" for i in range(21)] + ["extra"] + [f"tau{i}" for i in range(7)]
    rows = [[str(float(i + j)) for j in range(29)] for i in range(4)]
    p = write_csv(tmp_path / "named.csv", rows, header, sep=",")
    ds = D.Sarcos(p, input_columns=header[:21], target_columns=header[22:], standardize=False)
    X, Y = ds.tensors()
    assert X.shape == (4, 21) and Y.shape == (4, 7)
    # inputs are columns 0..20, targets 22..28: the 'extra' column 21 is skipped
    assert Y[0].tolist() == [float(j) for j in range(22, 29)] and X[3, 0] == 3.0
    with pytest.raises(D.CSVFormatError, match=r"named.csv: 29 columns; SARCOS has 28"):
        D.Sarcos(p)
    with pytest.raises(D.CSVFormatError, match=r"missing column\(s\) tau9"):
        D.Sarcos(p, input_columns=header[:21], target_columns=header[22:28] + ["tau9"])
    rows[1][3] = "nan"
    p = write_csv(tmp_path / "nan.csv", rows, header, sep=",")
    with pytest.raises(D.CSVFormatError, match=r"nan.csv, line 3: column 'q3' must hold finite numbers"):
        D.Sarcos(p, input_columns=header[:21], target_columns=header[22:])
    with pytest.raises(D.DataNotFoundError, match="TORCHMOO_SARCOS_DIR"):
        D.Sarcos()
    monkeypatch.setenv(D.SARCOS_ENV, str(tmp_path / "missing"))
    with pytest.raises(D.DataNotFoundError, match="environment variable TORCHMOO_SARCOS_DIR points to"):
        D.Sarcos()


# ------------------------------------------------------------------------------------ sinusoid
def test_sinusoid_tasks():
    tasks = D.SinusoidTasks(num_tasks=200, num_support=5, num_query=10, seed=3)
    assert len(tasks) == 200
    assert tasks.amplitude.min() >= 0.1 and tasks.amplitude.max() <= 5.0
    assert tasks.phase.min() >= 0.0 and tasks.phase.max() <= math.pi
    t = tasks[17]
    assert t.x_support.shape == (5, 1) and t.y_support.shape == (5, 1) and t.x_query.shape == (10, 1)
    x = torch.cat([t.x_support, t.x_query])
    assert x.min() >= -5.0 and x.max() <= 5.0
    torch.testing.assert_close(t.y_support, tasks.amplitude[17] * torch.sin(t.x_support + tasks.phase[17]))
    torch.testing.assert_close(t.y_query, tasks.amplitude[17] * torch.sin(t.x_query + tasks.phase[17]))
    # random access is reproducible; another seed is another family
    assert torch.equal(tasks[17].x_query, D.SinusoidTasks(200, 5, 10, seed=3)[17].x_query)
    assert not torch.equal(tasks.amplitude, D.SinusoidTasks(200, 5, 10, seed=4).amplitude)
    batch = next(iter(DataLoader(tasks, batch_size=4)))
    assert isinstance(batch, D.RegressionTask) and batch.x_support.shape == (4, 5, 1)
    with pytest.raises(ValueError, match="num_support"):
        D.SinusoidTasks(num_support=0)
    with pytest.raises(IndexError, match="task index 200 out of range for 200 tasks"):
        tasks[200]


# ------------------------------------------------------------------------------------ episodes
def test_episode_sampler():
    labels = torch.arange(12).repeat_interleave(20)  # 12 classes x 20 examples
    labels[:5] = 99  # class 99 has 5 examples: too few for 3 shots + 4 queries
    features = torch.arange(len(labels)).float().unsqueeze(1)
    ds = TensorDataset(features, labels)
    sampler = D.EpisodeSampler(labels, n_way=5, k_shot=3, n_query=4, num_episodes=6, seed=1)
    assert 99 not in sampler.classes.tolist()
    loader = DataLoader(ds, batch_sampler=sampler)
    episodes = list(loader)
    assert len(episodes) == 6
    for x, y in episodes:
        assert x.shape == (5 * 7, 1)
        xs, ys, xq, yq = D.split_episode(y, 5, 3, 4)
        assert len(set(ys.tolist())) == 5 and set(ys.tolist()) == set(yq.tolist())
        # the episode labels name the drawn classes consistently in support and query
        _, rel_s, _, rel_q = D.split_episode(x, 5, 3, 4)
        for k in range(5):
            assert len(set(xs[rel_s == k].tolist())) == 1
            assert set(xq[rel_q == k].tolist()) == set(xs[rel_s == k].tolist())
        assert len(set(x.flatten().tolist())) == 35  # no example twice
    # fixed episodes on every pass; new ones after set_epoch
    assert [list(e) for e in sampler] == [list(e) for e in sampler]
    first = sampler.episode(0)
    sampler.set_epoch(1)
    assert sampler.episode(0) != first
    # labels read from a data set
    assert torch.equal(D.labels_of(ds), labels)
    assert len(D.EpisodeSampler(ds, 2, 1, 1, num_episodes=3)) == 3


def test_episode_sampler_errors():
    labels = torch.arange(4).repeat_interleave(3)
    with pytest.raises(ValueError, match=r"needs 5 classes with at least 4 examples.*only 0 of the 4"):
        D.EpisodeSampler(labels, n_way=5, k_shot=2, n_query=2)
    with pytest.raises(ValueError, match="one class per example"):
        D.EpisodeSampler(torch.zeros(4, 2, dtype=torch.long), 1, 1)
    with pytest.raises(TypeError, match="integers"):
        D.EpisodeSampler(torch.zeros(4), 1, 1)
    with pytest.raises(ValueError, match="k_shot"):
        D.EpisodeSampler(labels, 2, 0)
    with pytest.raises(ValueError, match="has 12 examples"):
        D.split_episode(torch.zeros(10), 2, 2, 4)


# ------------------------------------------------------------------------- robustness of the readers
def test_idx_huge_declared_shape_is_truncated_not_malformed(tmp_path):
    # (2^32 - 1)^2 bytes declared, none present: the byte count must not wrap around in 64-bit arithmetic
    path = _bytes_file(tmp_path, "huge-idx2-ubyte", b"\x00\x00\x08\x02" + struct.pack(">2I", 2**32 - 1, 2**32 - 1))
    with pytest.raises(D.IDXError, match=r"truncated: .*\(18446744065119617025 bytes of data\) but only 0 bytes"):
        D.read_idx(path)


def test_corrupt_gzip_csv_is_a_format_error(tmp_path):
    rows = [[repr(float(i + j)) for j in range(28)] for i in range(300)]
    packed = bytearray(gzip.compress(("\n".join(",".join(r) for r in rows) + "\n").encode()))
    for i in range(20, 60):  # damage the deflate stream, not the gzip header
        packed[i] ^= 0x55
    (tmp_path / "sarcos_inv.csv").write_bytes(bytes(packed))
    with pytest.raises(D.CSVFormatError, match="sarcos_inv.csv: gzip-compressed data is truncated or corrupt"):
        D.Sarcos(tmp_path)


def test_sarcos_with_pandas_positional_header(tmp_path):
    # pandas.DataFrame(array).to_csv(index=False) heads the columns 0..27: a header, not a row of data
    data = np.random.default_rng(1).normal(size=(6, 28))
    p = write_csv(tmp_path / "s.csv", [[repr(float(v)) for v in row] for row in data], [str(i) for i in range(28)], sep=",")
    ds = D.Sarcos(p, standardize=False)
    assert len(ds) == 6
    torch.testing.assert_close(ds.inputs, torch.from_numpy(data[:, :21]).float())
    torch.testing.assert_close(ds.targets, torch.from_numpy(data[:, 21:]).float())
    # a header-less file still keeps its first row
    q = write_csv(tmp_path / "t.csv", [[repr(float(v)) for v in row] for row in data], sep=",")
    assert len(D.Sarcos(q)) == 6


def test_load_image_folder_modes_sizes_and_stray_files(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    rgb = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (5, 5), dtype=np.uint16)
    wide = rng.integers(0, 256, (3, 8, 3), dtype=np.uint8)  # 8 wide, 3 high: resized without keeping the ratio
    (tmp_path / "b_rgb").mkdir()
    (tmp_path / "a_gray").mkdir()
    (tmp_path / ".hidden_class").mkdir()
    Image.fromarray(gray, mode="L").save(tmp_path / "a_gray" / "1.png")
    Image.fromarray(deep).save(tmp_path / "a_gray" / "2.png")  # 16-bit grayscale PNG
    Image.fromarray(rgb).save(tmp_path / "b_rgb" / "x.bmp")
    Image.fromarray(wide).save(tmp_path / "b_rgb" / "y.png")
    (tmp_path / "a_gray" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    (tmp_path / "a_gray" / "._1.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: ignored
    x, y, names = D.load_image_folder(tmp_path, 5)
    assert names == ["a_gray", "b_rgb"] and y.tolist() == [0, 0, 1, 1]
    assert x.shape == (4, 3, 5, 5) and x.dtype == torch.float32
    # grayscale in all three channels; 16-bit scaled to [0, 1] (Pillow alone clips it to white)
    torch.testing.assert_close(x[0], torch.from_numpy(gray).float().div(255).expand(3, 5, 5))
    torch.testing.assert_close(x[1], torch.from_numpy(deep / 65535.0).float().expand(3, 5, 5), atol=0.5 / 255 + 1e-6, rtol=0)
    torch.testing.assert_close(x[2], torch.from_numpy(rgb).permute(2, 0, 1).float().div(255))
    expected = np.asarray(Image.fromarray(wide).resize((5, 5), Image.BILINEAR))
    torch.testing.assert_close(x[3], torch.from_numpy(expected.copy()).permute(2, 0, 1).float().div(255))
    # errors: an empty class, an unreadable image
    (tmp_path / "c_empty").mkdir()
    with pytest.raises(ValueError, match="c_empty.*has no image file"):
        D.load_image_folder(tmp_path, 5)
    (tmp_path / "c_empty" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"bad.jpg: cannot be read as an image"):
        D.load_image_folder(tmp_path, 5)
    with pytest.raises(D.DataNotFoundError, match="does not exist"):
        D.load_image_folder(tmp_path / "nowhere", 5)


def test_episode_sampler_counts_and_seeds():
    labels = torch.arange(6).repeat_interleave(9)[torch.randperm(54, generator=torch.Generator().manual_seed(0))]
    a = D.EpisodeSampler(labels, n_way=4, k_shot=2, n_query=3, num_episodes=5, seed=7)
    b = D.EpisodeSampler(labels, n_way=4, k_shot=2, n_query=3, num_episodes=5, seed=7)
    c = D.EpisodeSampler(labels, n_way=4, k_shot=2, n_query=3, num_episodes=5, seed=8)
    assert list(a) == list(b) and list(a) != list(c)
    for ep in a:
        support, query = labels[ep[:8]], labels[ep[8:]]
        assert not set(ep[:8]) & set(ep[8:])
        # class by class: k_shot support then n_query query examples of the same four classes
        assert support.view(4, 2).unique(dim=1).shape == (4, 1) and query.view(4, 3).unique(dim=1).shape == (4, 1)
        assert torch.equal(support.view(4, 2)[:, 0], query.view(4, 3)[:, 0]) and len(set(support.tolist())) == 4


# ------------------------------------------------------------------------- splits, seeds and inputs
def test_sarcos_header_less_file_in_exponent_notation_keeps_its_first_row(tmp_path):
    # numpy.savetxt writes "%.18e" ("1.257e-01"): the first row is data, not a header of 28 odd names
    data = np.random.default_rng(2).normal(size=(5, 28))
    np.savetxt(tmp_path / "sarcos_inv.csv", data, delimiter=",")
    ds = D.Sarcos(tmp_path, standardize=False)
    assert len(ds) == 5
    torch.testing.assert_close(ds.inputs, torch.from_numpy(data[:, :21]).float())
    torch.testing.assert_close(ds.targets, torch.from_numpy(data[:, 21:]).float())


def test_sarcos_test_split_is_standardised_with_the_training_statistics(tmp_path):
    rng = np.random.default_rng(3)
    train_data, test_data = rng.normal(0.0, 1.0, size=(20, 28)), rng.normal(5.0, 3.0, size=(6, 28))
    write_csv(tmp_path / "sarcos_inv.csv", [[repr(float(v)) for v in row] for row in train_data], sep=",")
    write_csv(tmp_path / "sarcos_inv_test.csv", [[repr(float(v)) for v in row] for row in test_data], sep=",")
    train, test = D.Sarcos(tmp_path), D.Sarcos(tmp_path, split="test")
    for ours, theirs in zip(test.stats, train.stats):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    x_mean, x_std = train_data[:, :21].mean(0), train_data[:, :21].std(0)
    torch.testing.assert_close(test.inputs, torch.from_numpy((test_data[:, :21] - x_mean) / x_std).float())
    # a file path has no training file next to it to refer to: its own statistics
    alone = D.Sarcos(tmp_path / "sarcos_inv_test.csv", split="test")
    torch.testing.assert_close(alone.inputs.mean(0), torch.zeros(21), atol=1e-5, rtol=0)


def test_sarcos_rejects_stats_of_the_wrong_shape(tmp_path):
    np.savetxt(tmp_path / "sarcos_inv.csv", np.random.default_rng(4).normal(size=(4, 28)), delimiter=",")
    good = D.Sarcos(tmp_path).stats
    scalar = D.SarcosStats(torch.zeros(1), torch.ones(1), torch.zeros(1), torch.ones(1))  # would broadcast
    with pytest.raises(ValueError, match=r"stats.x_mean must have shape \(21,\), got \(1,\)"):
        D.Sarcos(tmp_path, stats=scalar)
    with pytest.raises(ValueError, match=r"stats.y_std must be positive"):
        D.Sarcos(tmp_path, stats=good._replace(y_std=torch.zeros(7)))
    # numpy arrays are fine
    D.Sarcos(tmp_path, stats=D.SarcosStats(*(s.numpy() for s in good)))


def test_census_test_split_is_encoded_as_the_training_file(tmp_path):
    rows, test_rows = census_rows(30, 0), census_rows(8, 1)
    sex = UCI_CENSUS_COLUMNS.index("sex")
    for r in test_rows:
        r[sex] = "Female"  # the test file alone would have one sex column fewer than the training file
    write_csv(tmp_path / "census-income.data", rows)
    write_csv(tmp_path / "census-income.test", test_rows)
    train = D.CensusIncome(tmp_path)
    test = D.CensusIncome(tmp_path, split="test")
    assert test.encoding == train.encoding and test.num_features == train.num_features
    torch.testing.assert_close(test.features, D.CensusIncome(tmp_path, "test", encoding=train.encoding).features)


def test_census_exclude_must_name_columns(tmp_path):
    write_csv(tmp_path / "census-income.data", census_rows(5, 0))
    assert "income" not in [n.split("=")[0] for n in D.CensusIncome(tmp_path, exclude=["Income"]).encoding.feature_names()]
    with pytest.raises(D.CSVFormatError, match="exclude names column.*incom "):
        D.CensusIncome(tmp_path, exclude=["incom"])


def test_sinusoid_task_depends_on_seed_and_index_only():
    small, large = D.SinusoidTasks(20, 5, 10, seed=0), D.SinusoidTasks(500, 5, 10, seed=0)
    assert torch.equal(small.amplitude, large.amplitude[:20]) and torch.equal(small.phase, large.phase[:20])
    assert torch.equal(small[7].y_query, large[7].y_query)


def test_sinusoid_families_share_no_random_numbers():
    # meta-training (seed 0) and meta-testing (seed 1) families: the inputs of a training task must not
    # be the uniform numbers behind the test amplitudes (consecutive generator seeds made them so)
    train, test = D.SinusoidTasks(50, 5, 10, seed=0), D.SinusoidTasks(50, 5, 10, seed=1)
    u_test = torch.cat([(test.amplitude - 0.1) / 4.9, test.phase / math.pi])
    for i in range(5):
        t = train[i]
        u_points = (torch.cat([t.x_support, t.x_query]).flatten() + 5) / 10
        for k in range(len(u_test) - 14):
            assert (u_points - u_test[k : k + 15]).abs().max() > 1e-3


def test_resize_square_checks_its_input():
    x = torch.rand(2, 1, 8, 8)
    assert D.resize_square(x, 16).shape == (2, 1, 16, 16) and D.resize_square(x, 8) is x
    torch.testing.assert_close(D.resize_square(x, 16)[:, :, ::2, ::2], x)
    with pytest.raises(ValueError, match=r"square images .*\(2, 1, 8, 4\)"):
        D.resize_square(torch.rand(2, 1, 8, 4), 8)  # would come back 16 x 8
    with pytest.raises(ValueError, match="positive int"):
        D.resize_square(x, 0)


# -------------------------------------------------- what a wrong loader would get silently wrong
def test_multimnist_pairs_different_images_and_checks_the_labels(mnist_dir, tmp_path):
    ds = D.MultiMNIST(mnist_dir, seed=0)
    # the lower-right item is drawn at random, not the upper-left image again
    assert int((ds.sources[:, 0] == ds.sources[:, 1]).sum()) <= 2
    big = tmp_path / "label10"
    write_mnist(big, "train", torch.zeros(2, 28, 28, dtype=torch.uint8), torch.tensor([1, 10], dtype=torch.uint8))
    with pytest.raises(D.IDXError, match="0..9, found 10"):
        D.MultiMNIST(big)


def test_multimnist_subset_is_a_function_of_the_seed(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder, "train", *fake_mnist(40, 7))
    a, b = D.MultiMNISTSubset(folder, size=16, seed=2), D.MultiMNISTSubset(folder, size=16, seed=2)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    assert not torch.equal(D.MultiMNISTSubset(folder, size=16, seed=3).indices, a.indices)


def test_render_digits_clamps_out_of_range_intensities():
    pytest.importorskip("sklearn")
    d = torch.full((1, 8, 8), 8.0)
    d[0, 0, 0], d[0, 7, 7] = -3.0, 20.0  # uint8 would wrap -3 * 255 / 16 and 20 * 255 / 16 around
    frames = D.render_digits(d)
    assert frames[0, 2, 2] == 0 and frames[0, 25, 25] == 255 and frames[0, 10, 10] == 128


def test_multidigits_extra_images_are_fresh_pairs_normalised_as_the_training_split(digits):
    train, _ = digits
    more = D.MultiDigits("train", seed=0, num_images=3000)
    assert (more.mean, more.std) == (train.mean, train.std)
    # each pass over the sources pairs them with a fresh permutation: (nearly) no pair repeats
    assert len(set(map(tuple, more.sources.tolist()))) >= 2990


# The 42 columns of census-income.data in the order census-income.names lists them, written out here
# independently of the loader's own list.
UCI_ORDER = [
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code",
    "major_occupation_code", "race", "hispanic_origin", "sex", "member_of_a_labor_union",
    "reason_for_unemployment", "full_or_part_time_employment_stat", "capital_gains", "capital_losses",
    "dividends_from_stocks", "tax_filer_stat", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veteran_s_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income",
]


def test_census_header_less_columns_are_read_in_the_uci_order(tmp_path):
    numeric = {"age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks", "instance_weight",
               "num_persons_worked_for_employer", "weeks_worked_in_year"}
    rows = []
    for k in range(6):
        row = []
        for col in UCI_ORDER:
            if col == "education":
                row.append("Children")
            elif col == "marital_stat":
                row.append("Divorced")
            elif col in numeric:
                row.append(str(float(10 * k + len(col))))
            else:
                row.append(f"{col}#{k % 2}")  # every cell says which column it belongs to
        rows.append(row)
    ds = D.CensusIncome(write_csv(tmp_path / "census-income.data", rows))
    for column, cats in ds.encoding.categorical:
        assert all(v.startswith(column + "#") for v in cats), (column, cats)
    assert [c for c, _ in ds.encoding.categorical] == [c for c in UCI_ORDER if c not in numeric | {"education", "marital_stat"}]


def test_census_labels_features_and_options_of_a_headed_file(tmp_path):
    # the 17 education levels of census-income.names and whether each is at least college
    levels = {
        "Children": 0, "Less than 1st grade": 0, "1st 2nd 3rd or 4th grade": 0, "5th or 6th grade": 0,
        "7th and 8th grade": 0, "9th grade": 0, "10th grade": 0, "11th grade": 0, "12th grade no diploma": 0,
        "High school graduate": 0, "Some college but no degree": 1, "Associates degree-occup /vocational": 1,
        "Associates degree-academic program": 1, "Bachelors degree(BA AB BS)": 1,
        "Masters degree(MA MS MEng MEd MSW MBA)": 1, "Prof school degree (MD DDS DVM LLB JD)": 1,
        "Doctorate degree(PhD EdD)": 1,
    }
    ages = [39, 40, 41, 17, 80, 40, 0, 55, 39, 62, 33, 40, 25, 47, 90, 12, 38]
    regions = ["West", "South", "Abroad", "Northeast", "Midwest", "Not in universe", "South", "West", "Abroad",
               "Midwest", "West", "South", "Northeast", "Abroad", "West", "Midwest", "South"]
    header = ["Age", "Education", "Marital stat", "Region of previous residence", "Capital gains", "Hours slept"]
    rows = [[str(a), e, "Never married" if k % 3 else "Divorced", r, str(10.0 * k), str(7.0 + k % 2)]
            for k, (a, e, r) in enumerate(zip(ages, levels, regions))]
    p = write_csv(tmp_path / "c.csv", rows, header, sep=",")
    ds = D.CensusIncome(p)
    assert ds.targets[:, 0].tolist() == [int(a >= 40) for a in ages]
    assert ds.targets[:, 1].tolist() == list(levels.values())
    assert ds.targets[:, 2].tolist() == [int(k % 3 != 0) for k in range(17)]
    # a numeric column the UCI layout does not name is a measurement; categories come sorted, so
    # the features do not depend on the order of a set (which changes from one process to the next)
    assert [c for c, _, _ in ds.encoding.continuous] == ["capital_gains", "hours_slept"]
    assert ds.encoding.categorical == (("region_of_previous_residence", tuple(sorted(set(regions)))),)
    raw = D.CensusIncome(p, standardize=False)
    assert raw.encoding.continuous == (("capital_gains", 0.0, 1.0), ("hours_slept", 0.0, 1.0))
    torch.testing.assert_close(raw.features[:, 0], torch.arange(17.0) * 10)


def test_sarcos_named_columns_test_split_uses_the_training_file(tmp_path):
    header = [f"q{i}" for i in range(21)] + ["extra"] + [f"tau{i}" for i in range(7)]
    rng = np.random.default_rng(5)
    train, test = rng.normal(1.0, 2.0, size=(12, 29)), rng.normal(-4.0, 0.5, size=(4, 29))
    train[:, 0] = 3.5  # a constant input: shifted to 0, not divided by a zero std
    write_csv(tmp_path / "train.csv", [[repr(float(v)) for v in r] for r in train], header, sep=",")
    write_csv(tmp_path / "test.csv", [[repr(float(v)) for v in r] for r in test], header, sep=",")
    cols = dict(input_columns=header[:21], target_columns=header[22:])
    a, b = D.Sarcos(tmp_path, **cols), D.Sarcos(tmp_path, split="test", **cols)
    for ours, theirs in zip(b.stats, a.stats):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(b.targets, torch.from_numpy((test[:, 22:] - train[:, 22:].mean(0)) / train[:, 22:].std(0)).float())
    assert torch.isfinite(a.inputs).all() and a.inputs[:, 0].abs().max() == 0
    torch.testing.assert_close(b.inputs[:, 0], torch.from_numpy(test[:, 0] - 3.5).float())


def test_sarcos_byte_order_mark_and_one_based_header(tmp_path):
    data = np.random.default_rng(6).normal(size=(5, 28))
    body = "\n".join(",".join(repr(float(v)) for v in r) for r in data) + "\n"
    # spreadsheet programs write "CSV UTF-8" with a byte order mark: the first row is still data
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    ds = D.Sarcos(tmp_path / "bom.csv", standardize=False)
    assert len(ds) == 5
    torch.testing.assert_close(ds.inputs, torch.from_numpy(data[:, :21]).float())
    # columns numbered 1..28 are a header, not a row of data
    (tmp_path / "one.csv").write_text(",".join(str(i + 1) for i in range(28)) + "\n" + body)
    ds = D.Sarcos(tmp_path / "one.csv", standardize=False)
    torch.testing.assert_close(ds.targets, torch.from_numpy(data[:, 21:]).float())


def test_load_image_folder_labels_follow_the_sorted_class_names(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    names = ["zeta", "alpha", "omega", "beta", "mu", "delta", "kappa", "gamma"]
    for k, name in enumerate(names):  # created out of order: the labels must not follow the directory order
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((2, 2), 10 * k, dtype=np.uint8), mode="L").save(tmp_path / name / "a.png")
    x, y, classes = D.load_image_folder(tmp_path, 2)
    assert classes == sorted(names) and y.tolist() == list(range(8))
    torch.testing.assert_close(x[:, 0, 0, 0] * 255, torch.tensor([10.0 * names.index(c) for c in classes]))


def test_episode_classes_with_exactly_enough_examples_and_tasks_without_queries():
    labels = torch.arange(5).repeat_interleave(4)  # 4 examples per class, exactly k_shot + n_query
    sampler = D.EpisodeSampler(labels, n_way=5, k_shot=1, n_query=3, num_episodes=2)
    assert sorted(next(iter(sampler))) == list(range(20))
    tasks = D.SinusoidTasks(10, num_support=4, num_query=0, phase=(1.0, 2.0), seed=0)
    t = tasks[3]
    assert t.x_support.shape == (4, 1) and t.x_query.shape == (0, 1) and t.y_query.shape == (0, 1)
    assert tasks.phase.min() >= 1.0 and tasks.phase.max() <= 2.0
