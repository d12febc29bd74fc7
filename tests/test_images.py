"""Tests for dataset="images": users' image folders (one folder per client, or one folder split by
Dirichlet label skew), labels by the agreed class names, the CNN built for the data's shape, and
the one-line errors for bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, MetricRecord, RecordDict
from PIL import Image
from test_models import C1, C2, CASES, CLASSES, cnn_exactness_case

from hasa_flwr.federation.config import Settings
from hasa_flwr.data import LOCAL, DataError, Source, client_order, images_client, load_federated, vocab_hash
from hasa_flwr.data.images import dirichlet_rows
from hasa_flwr.study.launch import app_defaults
from hasa_flwr.method.models import WidthCNN, mac_cost
from hasa_flwr.federation.strategy import FederationError, agreed_images

ROOT = Path(__file__).resolve().parents[1]
CLASSES3 = ("cat", "dog", "fox")
VALUE = {"cat": 40, "dog": 120, "fox": 200, "test": 80, "bird": 160}  # pixel (0, 0) tells an image's class


def write_images(folder: Path, counts: dict[str, int], size: tuple[int, int] = (6, 6), mode: str = "RGB") -> Path:
    """``counts[c]`` PNGs of ``size`` (width, height) in ``folder/c``; pixel (0, 0) encodes the class."""
    for cls, n in counts.items():
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            v = VALUE[cls]
            gray = np.full((size[1], size[0]), v, dtype=np.uint8)
            gray[-1, -1] = i  # images of a class differ
            pixels = gray if mode == "L" else np.stack([gray, 255 - gray, np.full_like(gray, 7)], axis=-1)
            Image.fromarray(pixels, mode).save(folder / cls / f"{i:03d}.png")
    return folder


def class_of(x: torch.Tensor) -> list[str]:
    by_value = {v: c for c, v in VALUE.items()}
    return [by_value[round(float(v) * 255)] for v in x[:, 0, 0, 0]]


def images_source(path: Path, num_clients: int, class_names: tuple[str, ...] = CLASSES3, **kw) -> Source:
    return Source("images", data_path=str(path), num_clients=num_clients, class_names=class_names, **kw)


@pytest.fixture
def per_client(tmp_path) -> Path:
    """Layout (a): one imagefolder per client; bob lacks fox."""
    root = tmp_path / "fed"
    write_images(root / "alice", {"cat": 4, "dog": 3, "fox": 3})
    write_images(root / "bob", {"cat": 2, "dog": 7})
    write_images(root / "carol", {"cat": 4, "dog": 4, "fox": 2})
    return root


# ----------------------------------------------------------------------------- layouts and labels


def test_folder_per_client_labels_shapes_and_numbering(per_client):
    fd = load_federated(images_source(per_client, 3, seed=1))
    assert fd.kind == "image" and fd.num_classes == 3 and fd.vocab is None and fd.input_shape == (3, 6, 6)
    # numbered like text: largest first (training images: 8, 8, 7), ties by name
    assert [c.name for c in fd.clients] == ["alice", "carol", "bob"]
    assert [c.n_train + c.n_test for c in fd.clients] == [10, 10, 9]
    for c in fd.clients:
        assert c.classes == CLASSES3
        for x, y in ((c.x_train, c.y_train), (c.x_test, c.y_test)):
            assert x.dtype == torch.float32 and x.shape[1:] == (3, 6, 6) and 0.0 <= x.min() and x.max() <= 1.0
            assert class_of(x) == [CLASSES3[i] for i in y.tolist()]  # label = index in class-names
            torch.testing.assert_close(x[:, 1, 0, 0], 1.0 - x[:, 0, 0, 0])  # channels first, in RGB order
    bob = fd.clients[2]
    assert bob.label_counts(3)[2] == 0 and bob.label_counts(3).sum() == bob.n_train  # bob has no fox


def test_class_names_order_sets_the_labels(per_client):
    order = ("fox", "dog", "cat")
    fd = load_federated(images_source(per_client, 3, class_names=order))
    for c in fd.clients:
        assert class_of(c.x_train) == [order[i] for i in c.y_train.tolist()]


def test_default_class_names_are_the_sorted_class_folders(tmp_path):
    write_images(tmp_path / "a", {"fox": 2, "cat": 3})
    write_images(tmp_path / "b", {"cat": 2, "fox": 2})
    fd = load_federated(images_source(tmp_path, 2, class_names=()))
    assert fd.num_classes == 2 and all(c.classes == ("cat", "fox") for c in fd.clients)
    assert class_of(fd.clients[0].x_train) == [("cat", "fox")[i] for i in fd.clients[0].y_train.tolist()]


def test_default_class_names_need_every_class_folder_everywhere(per_client):
    with pytest.raises(DataError, match="clients see different class folders.*bob: cat, dog.*set class-names"):
        load_federated(images_source(per_client, 3, class_names=()))


def test_grayscale_and_the_first_image_sets_the_mode(tmp_path):
    write_images(tmp_path / "a", {"cat": 3, "dog": 3}, mode="L")
    write_images(tmp_path / "b", {"cat": 2}, mode="L")  # b's first image (cat/000.png) is gray, its dogs RGB
    write_images(tmp_path / "b", {"dog": 2}, mode="RGB")
    fd = load_federated(images_source(tmp_path, 2, class_names=("cat", "dog")))
    assert fd.input_shape == (1, 6, 6)
    a, b = fd.clients
    assert a.x_train.shape[1:] == b.x_train.shape[1:] == (1, 6, 6)
    assert class_of(a.x_train) == [("cat", "dog")[i] for i in a.y_train.tolist()]
    y = torch.cat([b.y_train, b.y_test])
    assert torch.bincount(y).tolist() == [2, 2]
    gray_dog = np.asarray(Image.open(tmp_path / "b" / "dog" / "000.png").convert("L"))[0, 0] / 255
    assert torch.cat([b.x_train, b.x_test])[y == 1, 0, 0, 0].tolist() == pytest.approx([gray_dog] * 2)


def test_rgb_and_gray_clients_disagree_on_the_shape(tmp_path):
    write_images(tmp_path / "a", {"cat": 3}, mode="L")
    write_images(tmp_path / "b", {"cat": 3}, mode="RGB")
    with pytest.raises(DataError, match=r"differ in shape .*a: 1x6x6; b: 3x6x6.*one mode"):
        load_federated(images_source(tmp_path, 2, class_names=("cat",)))


def test_a_class_folder_named_test_is_a_class(tmp_path):
    """HF would read a folder named test (given data_dir) as a split, not a class."""
    write_images(tmp_path / "a", {"cat": 3, "test": 3})
    write_images(tmp_path / "b", {"cat": 2, "test": 2})
    fd = load_federated(images_source(tmp_path, 2, class_names=()))
    assert fd.clients[0].classes == ("cat", "test") and fd.clients[0].n_train + fd.clients[0].n_test == 6


def test_one_folder_split_by_dirichlet(tmp_path):
    write_images(tmp_path / "pool", {"cat": 20, "dog": 20, "fox": 20}, size=(5, 7))
    a = load_federated(images_source(tmp_path / "pool", 3, class_names=(), seed=0, dirichlet_alpha=0.5))
    assert a.input_shape == (3, 7, 5) and a.num_classes == 3  # (channels, height, width)
    assert sorted(c.name for c in a.clients) == ["images-0", "images-1", "images-2"]
    sizes = [c.n_train + c.n_test for c in a.clients]
    assert sum(sizes) == 60 and min(sizes) >= 10
    assert [c.n_train for c in a.clients] == sorted((c.n_train for c in a.clients), reverse=True)
    # the partition is flwr-datasets' DirichletPartitioner on the labels, with its fixed seed
    labels = np.repeat([0, 1, 2], 20)
    want = {f"images-{k}": np.bincount(labels[rows], minlength=3) for k, rows in
            enumerate(dirichlet_rows(labels, 3, 0.5, 10))}
    for c in a.clients:
        got = c.label_counts(3) + np.bincount(c.y_test.numpy(), minlength=3)
        assert got.tolist() == want[c.name].tolist()
        assert class_of(c.x_train) == [CLASSES3[i] for i in c.y_train.tolist()]
    # the partition is fixed; only the train/test split follows the run seed
    b = load_federated(images_source(tmp_path / "pool", 3, class_names=(), seed=1, dirichlet_alpha=0.5))
    assert [c.n_train + c.n_test for c in b.clients] == sizes
    assert any(not torch.equal(u.y_train, v.y_train) for u, v in zip(a.clients, b.clients))


def test_device_reads_its_own_folder(tmp_path):
    folder = write_images(tmp_path / "kitchen-cam", {"cat": 3, "dog": 2})
    src = Source("images", class_names=CLASSES3, seed=0)
    data = images_client(src, LOCAL, str(folder), "")
    assert data.name == "kitchen-cam" and data.classes == CLASSES3 and data.n_train + data.n_test == 5
    assert images_client(src, LOCAL, str(folder), "kitchen").name == "kitchen"
    # the server numbers devices like text clients: largest first, ties by name
    assert client_order("images", [(LOCAL, 4, "b"), (LOCAL, 9, "z"), (LOCAL, 4, "a")]) == [1, 2, 0]


def test_client_app_reads_the_device_folder_from_its_node_config(tmp_path):
    from flwr.app import Context

    from hasa_flwr.federation import client

    folder = write_images(tmp_path / "cam", {"cat": 3, "fox": 2}, mode="L")
    s = settings(**{"dataset": "images", "class-names": "cat,dog,fox"})
    ctx = Context(run_id=1, node_id=1, node_config={"data-path": str(folder), "client-name": "porch"},
                  state=RecordDict(), run_config={})
    data, num_classes = client.client_data(s, ctx)
    assert (data.name, num_classes, client.input_shape(s, data)) == ("porch", 3, (1, 6, 6))


# ----------------------------------------------------------------------------- errors


def test_bad_folders_name_the_folder_and_the_fix(tmp_path, per_client, monkeypatch):
    monkeypatch.delenv("HASA_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="nowhere not found"):
        load_federated(images_source(tmp_path / "nowhere", 3))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="empty holds no images .*one sub-folder per class"):
        load_federated(images_source(tmp_path / "empty", 3))
    with pytest.raises(DataError, match="holds 3 client folders; set num-clients=3"):
        load_federated(images_source(per_client, 2))
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file: dataset 'images' reads a folder"):
        load_federated(images_source(tmp_path / "file.png", 2))
    write_images(tmp_path / "few" / "a", {"cat": 3})
    write_images(tmp_path / "few" / "b", {"cat": 1})
    with pytest.raises(DataError, match=r"client 'b' \(.*few/b\) has 1 image\(s\).*give it more images"):
        load_federated(images_source(tmp_path / "few", 2))


@pytest.mark.parametrize("case, match", [
    ("sizes", r"differ in size \(cat/000.png is 6x6, fox/000.png is 8x5 pixels.*resize every image .* e.g. 6x6"),
    ("unknown class", r"class folder 'bird', which is not in class-names \(cat, dog, fox\): add it to class-names"),
    ("loose image", "holds images outside class folders .*move each image"),
    ("broken image", "cannot read the images in .*image PIL can open"),
    ("one image", r"has 1 image\(s\); it needs at least 2"),
    ("client folders", "holds one folder per client: point it at this device's own image folder"),
])
def test_bad_device_folder_names_the_device_and_the_fix(tmp_path, case, match):
    folder = tmp_path / "mine"
    if case == "one image":
        write_images(folder, {"cat": 1})
    elif case == "client folders":
        write_images(folder / "a", {"cat": 2})
    else:
        write_images(folder, {"cat": 2, "dog": 2})
    if case == "sizes":
        write_images(folder, {"fox": 1}, size=(8, 5))
    elif case == "unknown class":
        write_images(folder, {"bird": 1})
    elif case == "loose image":
        (folder / "cat" / "000.png").rename(folder / "stray.png")
    elif case == "broken image":
        (folder / "dog" / "001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"^device 'ux': .*{match}") as err:
        images_client(Source("images", class_names=CLASSES3), LOCAL, str(folder), "ux")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- server: shapes and class lists


def stats_reply(name: str, shape: list[int], classes: tuple[str, ...]) -> RecordDict:
    return RecordDict({"stats": MetricRecord({"input-shape": shape}),
                       "info": ConfigRecord({"name": name, "classes": vocab_hash(list(classes))})})


def test_server_checks_that_clients_agree_on_shape_and_classes():
    same = {1: stats_reply("a", [3, 6, 6], CLASSES3), 2: stats_reply("b", [3, 6, 6], CLASSES3)}
    assert agreed_images(same) == (3, 6, 6)
    assert agreed_images({1: RecordDict({"stats": MetricRecord({}), "info": ConfigRecord({"name": "t"})})}) is None
    shapes = {**same, 3: stats_reply("c", [1, 6, 6], CLASSES3)}
    with pytest.raises(FederationError, match=r"3x6x6: node 1 \('a'\), node 2 \('b'\); 1x6x6: node 3 \('c'\)\): "
                                              "give every client images of one size"):
        agreed_images(shapes)
    lists = {**same, 3: stats_reply("c", [3, 6, 6], ("cat", "dog"))}
    with pytest.raises(FederationError, match=r"different class lists \(list 1: node 1 \('a'\), node 2 \('b'\); "
                                              r"list 2: node 3 \('c'\)\): set class-names"):
        agreed_images(lists)


# ----------------------------------------------------------------------------- settings and the CNN


def settings(**overrides) -> Settings:
    from hasa_flwr.federation.config import settings_from_run_config

    return settings_from_run_config({**app_defaults(ROOT), **overrides})


def test_class_names_key():
    s = settings(**{"dataset": "images", "class-names": " cat, dog,fox ,"})
    assert s.model == "cnn" and s.class_names == "cat,dog,fox" and s.source.class_names == CLASSES3
    assert settings(dataset="images").source.class_names == ()
    with pytest.raises(ValueError, match="lists a class twice"):
        settings(**{"dataset": "images", "class-names": "cat,cat"})
    with pytest.raises(ValueError, match="class-names is only read with dataset='images'"):
        settings(**{"dataset": "digits", "class-names": "cat"})
    assert Settings.from_dict({k: v for k, v in s.to_dict().items() if k != "class_names"}).class_names == ""


def test_settings_build_for_the_data_shape():
    s = settings(**{"dataset": "images", "embed-dim": 4, "hidden-dim": 8})
    with pytest.raises(ValueError, match="pass input_shape"):
        s.build(3)
    full = s.initial_model(3, (3, 6, 6))
    assert full.input_shape == (3, 6, 6) and full.head.weight.shape == (3, 8 * 9)
    assert full(torch.rand(5, 3, 6, 6)).shape == (5, 3)
    sub = s.prefix_of(full, 3, 0.5)
    assert sub.input_shape == (3, 6, 6) and sub.features[0].weight.shape == (2, 3, 3, 3)
    assert sub(torch.rand(5, 3, 6, 6)).shape == (5, 3)
    # digits: the shape the query round reports builds the very model the default did
    d = settings(**{"dataset": "digits", "embed-dim": 4, "hidden-dim": 8})
    a, b = d.initial_model(10), d.initial_model(10, (1, 8, 8))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize("kind,width", CASES)
@pytest.mark.parametrize("shape", [(3, 6, 6), (3, 7, 10)], ids=["3x6x6", "3x7x10"])
def test_cnn_extracted_subnet_is_exact_for_other_shapes(kind, width, shape):
    """test_models' exactness property for images other than 8x8 gray (odd sides pool to floor)."""
    channels, height, wide = shape
    _, sub, ref, k1, k2 = cnn_exactness_case(kind, width, shape)
    assert sub.features[0].weight.shape == (k1, channels, 3, 3)
    assert sub.head.weight.shape == (CLASSES, k2 * (height // 2) * (wide // 2))
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(9))
    for mode in (True, False):
        for m in (sub, ref):
            m.train(mode)
        with torch.no_grad():
            torch.testing.assert_close(sub(x), ref(x), atol=1e-5, rtol=0)  # logits ~10: float32 rounding only


def test_mac_cost_counts_the_image_size():
    model = WidthCNN(CLASSES, C1, C2, in_channels=3, image_size=(6, 10))
    positions, spatial = 60, 15
    full = C1 * 3 * 9 * positions + C2 * C1 * 9 * positions + CLASSES * C2 * spatial
    half = (C1 // 2) * 3 * 9 * positions + (C2 // 2) * (C1 // 2) * 9 * positions + CLASSES * (C2 // 2) * spatial
    assert float(mac_cost(model)(np.array([0.5]))[0]) == pytest.approx(half / full, rel=1e-12)
    with pytest.raises(ValueError, match="too small"):
        WidthCNN(CLASSES, C1, C2, image_size=(1, 6))


def test_predict_turns_a_photo_upright_as_training_does(tmp_path):
    """A camera JPEG stored sideways with an EXIF orientation: HF `datasets` turns the training images
    upright, so `hasa predict` must see the same pixels."""
    from datasets import Features, Image as HFImage
    from PIL import Image

    from hasa_flwr.predict import load_image

    img = Image.new("RGB", (6, 4))
    for x in range(6):
        for y in range(4):
            img.putpixel((x, y), (40 * x, 60 * y, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    path = tmp_path / "sideways.jpg"
    img.save(path, exif=exif, quality=100)
    trained = Features({"image": HFImage()}).decode_example({"image": {"path": str(path), "bytes": None}})["image"]
    assert trained.size == (4, 6)
    x = load_image(path, [3, 6, 4])
    assert x.shape == (1, 3, 6, 4)
    assert np.array_equal((x[0] * 255).round().astype(np.uint8), np.asarray(trained.convert("RGB")).transpose(2, 0, 1))
