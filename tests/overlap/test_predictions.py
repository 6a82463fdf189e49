from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.overlap.evalsets import EvalSet, EvalSpec, load_eval_set
from pipeline.overlap.predictions import PredictionsError, read_predictions
from tests.overlap.layouts import write_cifar10, write_imagenet


@pytest.fixture
def cifar(tmp_path: Path) -> EvalSet:
    write_cifar10(tmp_path / "c", 6)
    return load_eval_set(EvalSpec("cifar10", "cifar10", tmp_path / "c"))


@pytest.fixture
def imagenet(tmp_path: Path) -> EvalSet:
    write_imagenet(tmp_path / "in", per_class=1)
    return load_eval_set(EvalSpec("imagenet", "imagenet", tmp_path / "in"))


def test_csv_with_indices_and_names_in_any_order(tmp_path: Path, cifar: EvalSet) -> None:
    f = tmp_path / "p.csv"
    f.write_text("prediction,id\n3,5\ncat,0\n0,1\nairplane,2\ntruck,3\n9,4\n")
    assert read_predictions(f, cifar).tolist() == [3, 0, 0, 9, 9, 3]


def test_parquet_with_integer_predictions(tmp_path: Path, cifar: EvalSet) -> None:
    f = tmp_path / "p.parquet"
    pq.write_table(
        pa.table({"id": [str(i) for i in range(6)], "prediction": [1, 2, 3, 4, 5, 6]}), f
    )
    assert read_predictions(f, cifar).tolist() == [1, 2, 3, 4, 5, 6]


def test_imagenet_names_synset_ids_and_ambiguous_names(tmp_path: Path, imagenet: EvalSet) -> None:
    ids = list(imagenet.ids)
    f = tmp_path / "p.csv"
    f.write_text(
        f'id,prediction\n{ids[0]},tench\n{ids[1]},n01443537\n{ids[2]},134\n{ids[3]},"goldfish, Carassius auratus"\n'
    )
    assert read_predictions(f, imagenet).tolist() == [0, 1, 134, 1]
    f.write_text(f"id,prediction\n{ids[0]},crane\n{ids[1]},1\n{ids[2]},1\n{ids[3]},1\n")
    with pytest.raises(
        PredictionsError, match="'crane' names several classes: use the class index"
    ):
        read_predictions(f, imagenet)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("id,label\n0,1\n", "missing column.*prediction.*found id, label"),
        (
            "id,prediction\n0,1\n1,1\n",
            r"4 of 6 items of eval set cifar10 have no prediction, e.g. '2'",
        ),
        (
            "id,prediction\n" + "".join(f"{i},1\n" for i in range(6)) + "7,1\n",
            r"1 id\(s\) are not items.*'7'.*indices in the split, 0 to 5",
        ),
        ("id,prediction\n0,1\n0,2\n", r"appear twice, e.g. '0'"),
        (
            "id,prediction\n" + "".join(f"{i},zebra\n" for i in range(6)),
            r"item '0': 'zebra' is neither a class index \(0-9\) nor a class name",
        ),
        (
            "id,prediction\n" + "".join(f"{i},10\n" for i in range(6)),
            r"'10' is neither a class index",
        ),
    ],
)
def test_mismatches_are_errors_that_name_the_ids(
    tmp_path: Path, cifar: EvalSet, body: str, message: str
) -> None:
    f = tmp_path / "p.csv"
    f.write_text(body)
    with pytest.raises(PredictionsError, match=message):
        read_predictions(f, cifar)


def test_unreadable_files(tmp_path: Path, cifar: EvalSet) -> None:
    with pytest.raises(PredictionsError, match="not found"):
        read_predictions(tmp_path / "nope.csv", cifar)
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(PredictionsError, match=r"must be \.csv, \.tsv or \.parquet"):
        read_predictions(tmp_path / "p.json", cifar)
    (tmp_path / "p.parquet").write_bytes(b"not parquet")
    with pytest.raises(PredictionsError, match="cannot read"):
        read_predictions(tmp_path / "p.parquet", cifar)
