"""Every eval-set loader on a tiny generated folder in its real layout, and its errors."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.overlap import evalsets
from pipeline.overlap.evalsets import (
    EvalSetError,
    EvalSpec,
    load_eval_set,
    parse_eval_spec,
    read_idx,
)
from pipeline.overlap.imagenet_classes import class_names, synset_ids
from tests.overlap.layouts import (
    CIFAR10_CLASSES,
    idx_bytes,
    write_cifar10,
    write_cifar100,
    write_idx_set,
    write_imagefolder,
    write_imagenet,
    write_stl10,
    write_wds,
)


def _load(kind: str, path: Path | None = None, root: Path | None = None) -> evalsets.EvalSet:
    return load_eval_set(EvalSpec(kind, kind, path), {}, root)


def test_imagenet_class_folders_give_synset_labels_and_names(tmp_path: Path) -> None:
    images = write_imagenet(tmp_path / "imagenet", per_class=2)
    for path in (tmp_path / "imagenet", tmp_path / "imagenet" / "val"):
        s = _load("imagenet", path)
        assert s.root == tmp_path / "imagenet" / "val"
        assert list(s.ids) == sorted(images)
        assert s.ids[0] == "n01440764/ILSVRC2012_val_00000001.JPEG"
        expected = [synset_ids().index(i.split("/")[0]) for i in s.ids]
        assert s.labels.tolist() == expected
        assert s.labels.tolist()[::2] == [0, 1, 134, 517]  # tench, goldfish, crane, crane
        assert len(s.classes) == 1000 and s.classes[0] == "tench" and s.classes[1] == "goldfish"
        assert s.aliases["n01443537"] == 1
        assert np.array_equal(np.asarray(s.images.image(0)), np.asarray(images[s.ids[0]]))
    # Found under an --eval-root by its name.
    assert len(_load("imagenet", root=tmp_path)) == 8


def test_imagenet_builtin_classes_are_the_sorted_1000_synsets() -> None:
    ids = synset_ids()
    assert len(ids) == len(set(ids)) == 1000 and list(ids) == sorted(ids)
    assert class_names()[:3] == ("tench", "goldfish", "great white shark")
    assert class_names()[-1] == "toilet tissue"


def test_imagenet_errors_say_what_is_expected(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"x")
    with pytest.raises(EvalSetError, match=r"found 1 images directly in it.*n01440764/\*\.JPEG"):
        _load("imagenet", flat)
    odd = tmp_path / "odd" / "n99999999"
    odd.mkdir(parents=True)
    with pytest.raises(EvalSetError, match="not ImageNet-1k synsets: n99999999"):
        _load("imagenet", tmp_path / "odd")


def test_imagefolder_sorted_classes_and_relative_path_ids(tmp_path: Path) -> None:
    images = write_imagefolder(tmp_path / "pets", ["dog", "cat"], per_class=2)
    (tmp_path / "pets" / "cat" / "notes.txt").write_text("not an image")
    s = load_eval_set(parse_eval_spec(f"pets=imagefolder:{tmp_path / 'pets'}"))
    assert s.name == "pets" and s.kind == "imagefolder"
    assert s.classes == ("cat", "dog")
    assert list(s.ids) == ["cat/000.png", "cat/001.png", "dog/000.png", "dog/001.png"]
    assert s.labels.tolist() == [0, 0, 1, 1]
    assert s.images.encoded(2) == (tmp_path / "pets" / "dog" / "000.png").read_bytes()
    assert np.array_equal(np.asarray(s.images.image(3)), np.asarray(images["dog/001.png"]))


def test_cifar10_binary_release(tmp_path: Path) -> None:
    images, labels = write_cifar10(tmp_path, 12)
    for path in (tmp_path, tmp_path / "cifar-10-batches-bin"):
        s = _load("cifar10", path)
        assert s.ids == tuple(str(i) for i in range(12))
        assert s.labels.tolist() == labels.tolist()
        assert s.classes == CIFAR10_CLASSES
        assert s.images.encoded(0) is None
        for i in (0, 5, 11):
            assert np.array_equal(np.asarray(s.images.image(i)), images[i])


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    images, fine = write_cifar100(tmp_path, 9)
    s = _load("cifar100", tmp_path)
    assert s.labels.tolist() == fine.tolist()
    assert len(s.classes) == 100 and s.classes[7] == "fine7"
    assert np.array_equal(np.asarray(s.images.image(8)), images[8])


def test_cifar_python_release_is_refused_without_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps({"data": 1}))

    def no_unpickling(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickled an eval file")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(EvalSetError, match=r"Python release.*never loaded.*test_batch\.bin"):
        _load("cifar10", tmp_path)


def test_cifar_wrong_size_is_malformed(tmp_path: Path) -> None:
    write_cifar10(tmp_path, 3)
    f = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(EvalSetError, match="not a whole number of 3073-byte records"):
        _load("cifar10", tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_gz_or_not(tmp_path: Path, gz: bool) -> None:
    images, labels = write_idx_set(tmp_path / "mnist", 15, gz=gz)
    s = _load("mnist", tmp_path / "mnist")
    assert s.labels.tolist() == labels.tolist()
    assert s.classes == tuple(str(i) for i in range(10))
    assert np.array_equal(np.asarray(s.images.image(14)), images[14])
    assert s.images.image(0).mode == "L"


def test_fashion_mnist_found_in_torchvision_style_subfolder_and_debian_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, labels = write_idx_set(tmp_path / "fm" / "FashionMNIST" / "raw", 10, gz=True, dotted=True)
    s = _load("fashion-mnist", tmp_path / "fm")
    assert s.classes[0] == "T-shirt/top" and s.labels.tolist() == labels.tolist()
    # Without a path, Debian's dataset-fashion-mnist location is used when present.
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    write_idx_set(debian, 4, gz=True)
    kind = dataclasses.replace(evalsets.REGISTRY["fashion-mnist"], default_paths=(debian,))
    monkeypatch.setitem(evalsets.REGISTRY, "fashion-mnist", kind)
    assert len(_load("fashion-mnist")) == 4
    monkeypatch.setitem(
        evalsets.REGISTRY,
        "fashion-mnist",
        dataclasses.replace(kind, default_paths=(tmp_path / "absent",)),
    )
    with pytest.raises(
        EvalSetError, match=r"not found \(looked in .*absent\).*t10k-images-idx3-ubyte"
    ):
        _load("fashion-mnist")


def test_idx_errors(tmp_path: Path) -> None:
    write_idx_set(tmp_path, 3, gz=False)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    with pytest.raises(EvalSetError, match=r"malformed .*header cut short"):
        _load("mnist", tmp_path)
    images.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-1])
    with pytest.raises(EvalSetError, match=r"malformed .*header says"):
        _load("mnist", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(EvalSetError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found"):
        _load("mnist", tmp_path)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="cannot decompress"):
        read_idx(bad)
    good = tmp_path / "ok"
    good.write_bytes(idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3)))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_stl10_column_major_images_and_one_based_labels(tmp_path: Path) -> None:
    images, labels = write_stl10(tmp_path, 5)
    s = _load("stl10", tmp_path)
    assert s.labels.tolist() == labels.tolist()
    assert s.classes[0] == "class0"
    for i in range(5):
        assert np.array_equal(np.asarray(s.images.image(i)), images[i])
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(EvalSetError, match="5 images but 2 labels"):
        _load("stl10", tmp_path)
    (tmp_path / "stl10_binary" / "class_names.txt").unlink()
    with pytest.raises(EvalSetError, match=r"class_names\.txt not found.*STL-10 binary release"):
        _load("stl10", tmp_path)


def test_wds_clip_benchmark_layout(tmp_path: Path) -> None:
    images, labels = write_wds(tmp_path / "wds_cars", 7, shards=3)
    s = load_eval_set(parse_eval_spec(f"cars=wds:{tmp_path / 'wds_cars'}"))
    assert s.ids == tuple(str(i) for i in range(7))
    assert s.labels.tolist() == labels
    assert s.classes == ("cat", "dog", "bird")
    for i in (0, 3, 6):
        assert np.array_equal(np.asarray(s.images.image(i).convert("RGB")), np.asarray(images[i]))
    (tmp_path / "wds_cars" / "test" / "2.tar").unlink()
    with pytest.raises(EvalSetError, match=r"2\.tar missing of 3 shards"):
        load_eval_set(parse_eval_spec(f"wds:{tmp_path / 'wds_cars'}"))
    (tmp_path / "wds_cars" / "test" / "nshards.txt").unlink()
    with pytest.raises(EvalSetError, match=r"test/nshards\.txt not found.*CLIP_benchmark"):
        load_eval_set(parse_eval_spec(f"wds:{tmp_path / 'wds_cars'}"))


def test_eval_specs() -> None:
    assert parse_eval_spec("imagenet") == EvalSpec("imagenet", "imagenet", None)
    assert parse_eval_spec("fashion-mnist:/data/fm") == EvalSpec(
        "fashion-mnist", "fashion-mnist", Path("/data/fm")
    )
    assert parse_eval_spec("pets=imagefolder:/x") == EvalSpec("pets", "imagefolder", Path("/x"))
    for bad in ("imagenet2", "Imagenet", "=cifar10", "cifar10 extra"):
        with pytest.raises(EvalSetError, match="expected NAME, NAME:PATH"):
            parse_eval_spec(bad)


def test_missing_set_without_a_path_names_the_flags_and_layout(tmp_path: Path) -> None:
    with pytest.raises(
        EvalSetError, match=r"cifar10: not found \(no --eval-root given\).*test_batch\.bin"
    ):
        _load("cifar10")
    with pytest.raises(EvalSetError, match=r"looked in .*/cifar10, .*/cifar-10-batches-bin"):
        _load("cifar10", root=tmp_path)
    with pytest.raises(EvalSetError, match=r"does not exist; expected the CIFAR-10 binary release"):
        _load("cifar10", tmp_path / "nowhere")


def test_every_registered_kind_has_a_loader_test() -> None:
    # A new registry entry needs a generated-layout test here.
    assert set(evalsets.REGISTRY) == {
        "imagenet", "cifar10", "cifar100", "mnist", "fashion-mnist", "stl10", "imagefolder", "wds",
    }  # fmt: skip
