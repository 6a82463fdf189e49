from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.overlap.evalsets import EvalSet, EvalSpec, load_eval_set
from pipeline.overlap.predictions import NO_ANSWER, PredictionsError, read_predictions
from pipeline.overlap.zeroshot import write_predictions
from tests.overlap.layouts import write_cifar10, write_imagefolder, write_imagenet


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


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_training_predictions_with_an_undecodable_item_read_back_as_no_answer(
    tmp_path: Path, cifar: EvalSet, suffix: str
) -> None:
    """training.run --zeroshot (CSV) and --checkpoint (Parquet) write an undecodable
    item's prediction empty / null: it reads back as no answer, which never counts right."""
    written = [3, 0, -1, 9, 9, 3]  # item 2: the image could not be decoded
    top5 = np.array([[v] * 5 for v in written], np.int64)
    path = tmp_path / f"p{suffix}"
    write_predictions(path, cifar.ids, written, top5 if suffix == ".parquet" else None)
    got = read_predictions(path, cifar)
    assert got.tolist() == [3, 0, NO_ANSWER, 9, 9, 3]
    assert not (got == cifar.labels)[2]
    assert (got == cifar.labels).sum() == sum(
        w == lab for w, lab in zip(written, cifar.labels, strict=True)
    )


def test_an_empty_prediction_in_a_hand_written_csv_is_no_answer(
    tmp_path: Path, cifar: EvalSet
) -> None:
    f = tmp_path / "p.csv"
    f.write_text("id,prediction\n0,3\n1,\n2, \n3,truck\n4,9\n5,3\n")
    assert read_predictions(f, cifar).tolist() == [3, NO_ANSWER, NO_ANSWER, 9, 9, 3]


@pytest.fixture
def digits(tmp_path: Path) -> EvalSet:
    """An imagefolder whose classes are numbers: sorted, "10" and "11" come before "2"."""
    write_imagefolder(tmp_path / "digits", [str(i) for i in range(12)], per_class=1)
    es = load_eval_set(EvalSpec("imagefolder", "imagefolder", tmp_path / "digits"))
    assert es.classes[:4] == ("0", "1", "10", "11")
    return es


def test_a_number_that_is_one_class_index_and_another_class_name_is_refused(
    tmp_path: Path, digits: EvalSet
) -> None:
    f = tmp_path / "p.csv"
    # Each item predicted as its own folder's name: "0" and "1" mean the same either way.
    f.write_text("id,prediction\n" + "".join(f"{i},{i.split('/')[0]}\n" for i in digits.ids))
    with pytest.raises(
        PredictionsError,
        match=r"item '10/000\.png': '10' is ambiguous: class index 10 \('8'\) or the name of "
        r"class 2 \('10'\); give class indices as integers",
    ):
        read_predictions(f, digits)
    # A Parquet text column is read as CSV text is.
    pq.write_table(
        pa.table({"id": list(digits.ids), "prediction": [i.split("/")[0] for i in digits.ids]}),
        tmp_path / "names.parquet",
    )
    with pytest.raises(PredictionsError, match="is ambiguous"):
        read_predictions(tmp_path / "names.parquet", digits)


def test_an_integer_column_is_class_indices_even_where_they_are_class_names(
    tmp_path: Path, digits: EvalSet
) -> None:
    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"id": list(digits.ids), "prediction": list(range(12))}), f)
    assert read_predictions(f, digits).tolist() == list(range(12))
    # Text whose two readings agree is no ambiguity: "0" and "1" are index and name alike.
    f = tmp_path / "p.csv"
    f.write_text(
        "id,prediction\n"
        + "".join(f"{i},{'0' if n % 2 else '1'}\n" for n, i in enumerate(digits.ids))
    )
    assert read_predictions(f, digits).tolist() == [1, 0] * 6
