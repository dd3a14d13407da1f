"""The view engine beyond the official suite: differential tests against the reference evaluator on
generated resources, bad input (views, fields, missing types), typing, the resource id column, batches."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import random
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from airflow_provider_smart.exceptions import SmartError, ViewDefinitionError, ViewRunError
from airflow_provider_smart.views import compile_view, iter_view_batches, load_view, run_view


def _reference() -> Any:
    if "views_reference" not in sys.modules:
        spec = importlib.util.spec_from_file_location("views_reference", Path(__file__).with_name("reference.py"))
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["views_reference"] = module
        spec.loader.exec_module(module)
    return sys.modules["views_reference"]


def write(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    return path


# -- generated resources -------------------------------------------------------------------------------


def generate(seed: int, count: int) -> list[dict[str, Any]]:
    """Patients and Observations with lists of every length, absent fields, and values of the wrong type."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(count):
        patient: dict[str, Any] = {"resourceType": "Patient", "id": f"p{i}"}
        if rng.random() < 0.8:
            patient["name"] = [
                {
                    **({"family": rng.choice(["Smith", "Jones", "Brown"])} if rng.random() < 0.8 else {}),
                    **(
                        {"given": rng.sample(["Ann", "Bob", "Cy", "Di"], rng.randint(0, 3))}
                        if rng.random() < 0.7
                        else {}
                    ),
                    **({"use": rng.choice(["official", "usual", "old"])} if rng.random() < 0.6 else {}),
                }
                for _ in range(rng.randint(0, 3))
            ]
        if rng.random() < 0.7:
            patient["active"] = rng.choice([True, False, True, "yes"])  # "yes": not a boolean
        if rng.random() < 0.7:
            patient["birthDate"] = rng.choice(["1970-06-15", "1980", "1990-02", "2001-13-45", 1999])
        if rng.random() < 0.5:
            patient["telecom"] = [
                {"system": rng.choice(["phone", "email"]), "value": f"t{i}.{j}"} for j in range(rng.randint(0, 3))
            ]
        out.append(patient)
        for j in range(rng.randint(0, 3)):
            obs: dict[str, Any] = {
                "resourceType": "Observation",
                "id": f"o{i}.{j}",
                "status": rng.choice(["final", "amended", "preliminary"]),
                "subject": {"reference": f"Patient/p{i}"},
                "code": {
                    "coding": [
                        {"system": "http://loinc.org", "code": rng.choice(["8867-4", "2339-0", "718-7"])}
                        for _ in range(rng.randint(0, 3))
                    ]
                },
            }
            kind = rng.random()
            if kind < 0.6:
                obs["valueQuantity"] = {"value": rng.choice([72, 1.5, 0.25, 100.125, "high"]), "unit": "mg"}
            elif kind < 0.8:
                obs["valueString"] = rng.choice(["pos", "neg"])
            if rng.random() < 0.8:
                obs["effectiveDateTime"] = rng.choice(
                    ["2023-04-01T10:20:30Z", "2023-04-01", "2023-04-01T10:20:30+02:00"]
                )
            out.append(obs)
    rng.shuffle(out)
    return out


DIFFERENTIAL_VIEWS: list[dict[str, Any]] = [
    {
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "id", "type": "id"},
                    {"name": "active", "path": "active", "type": "boolean"},
                    {"name": "birth", "path": "birthDate", "type": "date"},
                    {"name": "family", "path": "name.family.first()", "type": "string"},
                    {"name": "families", "path": "name.family", "type": "string", "collection": True},
                    {"name": "has_name", "path": "name.exists()", "type": "boolean"},
                    {
                        "name": "phones",
                        "path": "telecom.where(system = 'phone').value",
                        "type": "string",
                        "collection": True,
                    },
                ]
            }
        ],
    },
    {
        "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "id", "type": "id"}]},
            {
                "forEachOrNull": "name",
                "column": [{"name": "family", "path": "family", "type": "string"}],
                "select": [{"forEach": "given", "column": [{"name": "given", "path": "$this", "type": "string"}]}],
            },
        ],
    },
    {
        "resource": "Patient",
        "where": [{"path": "name.exists()"}],
        "select": [
            {"column": [{"name": "id", "path": "id", "type": "id"}]},
            {
                "unionAll": [
                    {"forEach": "name", "column": [{"name": "text", "path": "family", "type": "string"}]},
                    {"forEach": "telecom", "column": [{"name": "text", "path": "value", "type": "string"}]},
                ]
            },
        ],
    },
    {
        "resource": "Observation",
        "constant": [{"name": "loinc", "valueUri": "http://loinc.org"}],
        "select": [
            {
                "column": [
                    {"name": "id", "path": "id", "type": "id"},
                    {"name": "status", "path": "status", "type": "code"},
                    {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
                    {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                    {"name": "text", "path": "value.ofType(string)", "type": "string"},
                ]
            },
            {
                "forEach": "code.coding.where(system = %loinc)",
                "column": [{"name": "code", "path": "code", "type": "code"}],
            },
        ],
    },
]


def _canonical(rows: list[dict[str, Any]]) -> Counter[str]:
    def norm(value: Any) -> Any:
        if isinstance(value, list):
            return [norm(v) for v in value]
        if isinstance(value, Decimal):
            return str(value.normalize())
        if isinstance(value, dt.datetime):
            return value.astimezone(dt.UTC).isoformat()
        if isinstance(value, dt.date):
            return value.isoformat()
        return value

    return Counter(json.dumps({k: norm(v) for k, v in sorted(row.items())}) for row in rows)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("view_index", range(len(DIFFERENTIAL_VIEWS)))
def test_engine_agrees_with_the_reference_on_generated_resources(seed: int, view_index: int, tmp_path: Path) -> None:
    resources = generate(seed, 60)
    view = DIFFERENTIAL_VIEWS[view_index]
    table = run_view(view, [write(tmp_path / "data.ndjson", resources)])
    expected = _reference().evaluate(view, resources)
    assert table.num_rows == len(expected) and table.num_rows > 0
    assert _canonical(table.to_pylist()) == _canonical(expected)


def test_the_differential_test_can_fail(tmp_path: Path) -> None:
    """The comparison sees a one-value difference (a guard against a test that cannot fail)."""
    resources = generate(1, 20)
    view = DIFFERENTIAL_VIEWS[0]
    rows = run_view(view, [write(tmp_path / "d.ndjson", resources)]).to_pylist()
    expected = _reference().evaluate(view, resources)
    rows[0] = {**rows[0], "family": "Changed"}
    assert _canonical(rows) != _canonical(expected)


# -- types ---------------------------------------------------------------------------------------------


def test_declared_types_become_arrow_types(tmp_path: Path) -> None:
    view = {
        "resource": "Observation",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "id", "type": "id"},
                    {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                    {"name": "count", "path": "component.count()", "type": "integer"},
                    {"name": "flag", "path": "valueQuantity.exists()", "type": "boolean"},
                    {"name": "day", "path": "issued", "type": "date"},
                    {"name": "at", "path": "effective.ofType(dateTime)", "type": "dateTime"},
                    {"name": "codes", "path": "code.coding.code", "type": "code", "collection": True},
                ]
            }
        ],
    }
    data = write(
        tmp_path / "o.ndjson",
        [
            {
                "resourceType": "Observation",
                "id": "o1",
                "valueQuantity": {"value": 98.6},
                "issued": "2024-02-29T08:00:00Z",
                "effectiveDateTime": "2024-02-29T08:00:00+01:00",
                "code": {"coding": [{"code": "a"}, {"code": "b"}]},
            }
        ],
    )
    table = run_view(view, [data])
    assert table.schema == pa.schema(
        [
            ("id", pa.string()),
            ("value", pa.decimal128(38, 9)),
            ("count", pa.int64()),
            ("flag", pa.bool_()),
            ("day", pa.date32()),
            ("at", pa.timestamp("us", tz="UTC")),
            ("codes", pa.list_(pa.string())),
        ]
    )
    row = table.to_pylist()[0]
    assert row["value"] == Decimal("98.6") and row["count"] == 0 and row["flag"] is True
    assert row["day"] == dt.date(2024, 2, 29)
    assert row["at"] == dt.datetime(2024, 2, 29, 7, 0, tzinfo=dt.UTC)
    assert row["codes"] == ["a", "b"]


# -- bad input -----------------------------------------------------------------------------------------

COLUMN = {"name": "id", "path": "id", "type": "id"}


@pytest.mark.parametrize(
    ("view", "path"),
    [
        (
            {"resource": "Patient", "select": [{"column": [COLUMN, {"name": "x", "path": "name.("}]}]},
            "select[0].column[1].path",
        ),
        (
            {"resource": "Patient", "select": [{"column": [COLUMN]}, {"forEach": 3, "column": [COLUMN]}]},
            "select[1].forEach",
        ),
        (
            {"resource": "Patient", "select": [{"column": [COLUMN, {"name": "id", "path": "id"}]}]},
            "select[0].column[1].path",
        ),
        ({"resource": "Patient", "select": [{"column": [{"name": "1x", "path": "id"}]}]}, "select[0].column[0].name"),
        (
            {"resource": "Patient", "select": [{"column": [{"name": "x", "path": "id", "type": "Quantity"}]}]},
            "select[0].column[0].type",
        ),
        ({"resource": "Patient", "select": [{"colum": [COLUMN]}]}, "select[0].colum"),
        (
            {"resource": "Patient", "select": [{"column": [{"name": "x", "path": "name.where(use = %nope)"}]}]},
            "select[0].column[0].path",
        ),
        (
            {"resource": "Patient", "select": [{"column": [{"name": "x", "path": "name.frobnicate()"}]}]},
            "select[0].column[0].path",
        ),
        ({"resource": "Patient", "constant": [{"name": "c"}], "select": [{"column": [COLUMN]}]}, "constant[0]"),
        ({"resource": "patient", "select": [{"column": [COLUMN]}]}, "resource"),
        ({"resource": "Patient", "where": [{"path": "active and"}], "select": [{"column": [COLUMN]}]}, "where[0].path"),
        (
            {
                "resource": "Patient",
                "select": [
                    {"unionAll": [{"column": [COLUMN]}, {"column": [{"name": "other", "path": "id", "type": "id"}]}]}
                ],
            },
            "select[0].unionAll[1]",
        ),
    ],
)
def test_a_malformed_view_names_the_path_at_fault(view: dict[str, Any], path: str) -> None:
    with pytest.raises(ViewDefinitionError) as caught:
        load_view(view)
    assert caught.value.path == path
    assert str(caught.value).startswith(path + ":")
    assert isinstance(caught.value, SmartError) and isinstance(caught.value, ValueError)
    assert caught.value.to_dict()["context"]["path"] == path


def test_a_view_file_and_json_text_load(tmp_path: Path) -> None:
    view = {"resource": "Patient", "name": "pts", "select": [{"column": [COLUMN]}]}
    (tmp_path / "v.json").write_text(json.dumps(view))
    assert load_view(tmp_path / "v.json").name == "pts"
    assert load_view(str(tmp_path / "v.json")) == load_view(json.dumps(view)) == load_view(view)
    assert [(c.name, c.type, c.collection) for c in load_view(view).columns] == [("id", "id", False)]
    with pytest.raises(ViewDefinitionError, match="not valid JSON"):
        load_view("{nope")
    with pytest.raises(ViewDefinitionError, match="cannot read"):
        load_view(tmp_path / "missing.json")


def test_fields_that_do_not_match_give_nulls_never_a_crash(tmp_path: Path) -> None:
    view = {
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "id", "type": "id"},
                    {"name": "active", "path": "active", "type": "boolean"},
                    {"name": "birth", "path": "birthDate", "type": "date"},
                    {"name": "births", "path": "multipleBirthInteger", "type": "integer"},
                    {"name": "family", "path": "name.family.first()", "type": "string"},
                    {"name": "weight", "path": "extension.value.ofType(Quantity).value.first()", "type": "decimal"},
                    {"name": "seen", "path": "meta.lastUpdated", "type": "instant"},
                ]
            }
        ],
    }
    odd = {
        "resourceType": "Patient",
        "id": "odd",
        "active": "yes",
        "birthDate": "not a date",
        "multipleBirthInteger": 2.5,
        "name": "Smith",
        "extension": {"valueQuantity": {"value": "heavy"}},
        "meta": {"lastUpdated": 17},
    }
    table = run_view(view, [write(tmp_path / "p.ndjson", [odd, {"resourceType": "Patient", "id": "plain"}])])
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["odd"] == {
        "id": "odd",
        "active": None,
        "birth": None,
        "births": None,
        "family": None,
        "weight": None,
        "seen": None,
    }
    assert rows["plain"] == {
        "id": "plain",
        "active": None,
        "birth": None,
        "births": None,
        "family": None,
        "weight": None,
        "seen": None,
    }


def test_a_type_the_export_lacks_gives_an_empty_typed_table(tmp_path: Path) -> None:
    view = {
        "resource": "Condition",
        "select": [
            {"column": [COLUMN, {"name": "onset", "path": "onset.ofType(dateTime)", "type": "dateTime"}]},
            {"forEach": "code.coding", "column": [{"name": "code", "path": "code", "type": "code"}]},
        ],
    }
    compiled = compile_view(view, resource_id_column="_resource_id")
    data = write(tmp_path / "p.ndjson", [{"resourceType": "Patient", "id": "p1"}])
    for files in ([data], []):
        table = run_view(compiled, files)
        assert table.num_rows == 0
        assert table.schema == compiled.arrow_schema
        assert table.schema.names == ["id", "onset", "code", "_resource_id"]
        assert table.schema.field("onset").type == pa.timestamp("us", tz="UTC")


def test_several_values_in_a_single_column_is_a_run_error(tmp_path: Path) -> None:
    view = {
        "resource": "Patient",
        "name": "pts",
        "select": [{"column": [{"name": "given", "path": "name.given", "type": "string"}]}],
    }
    data = write(tmp_path / "p.ndjson", [{"resourceType": "Patient", "id": "p1", "name": [{"given": ["a", "b"]}]}])
    with pytest.raises(ViewRunError, match="met several values") as caught:
        run_view(view, [data])
    assert caught.value.context["view"] == "pts"


def test_the_resource_id_column_carries_each_rows_resource(tmp_path: Path) -> None:
    view = {
        "resource": "Patient",
        "select": [{"forEach": "name", "column": [{"name": "family", "path": "family", "type": "string"}]}],
    }
    data = write(
        tmp_path / "p.ndjson",
        [
            {"resourceType": "Patient", "id": "a", "name": [{"family": "X"}, {"family": "Y"}]},
            {"resourceType": "Patient", "id": "b", "name": [{"family": "Z"}]},
        ],
    )
    table = run_view(view, [data], resource_id_column="_resource_id")
    assert sorted(zip(table["_resource_id"].to_pylist(), table["family"].to_pylist(), strict=True)) == [
        ("a", "X"),
        ("a", "Y"),
        ("b", "Z"),
    ]
    with pytest.raises(ViewDefinitionError, match="also a column"):
        compile_view(view, resource_id_column="family")


def test_batches_stream_the_same_rows_over_several_files(tmp_path: Path) -> None:
    resources = generate(7, 300)
    half = len(resources) // 2
    files = [write(tmp_path / "a.ndjson", resources[:half]), write(tmp_path / "b.ndjson", resources[half:])]
    view = DIFFERENTIAL_VIEWS[1]
    batches = list(iter_view_batches(view, files, batch_rows=50, threads=1))
    assert len(batches) > 1 and all(b.num_rows <= 50 for b in batches)
    whole = run_view(view, files)
    assert sum(b.num_rows for b in batches) == whole.num_rows
    assert _canonical(pa.Table.from_batches(batches).to_pylist()) == _canonical(whole.to_pylist())


def test_a_file_that_is_not_ndjson_is_a_run_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"resourceType": "Patient", "id": "a"}\n{not json\n')
    with pytest.raises(ViewRunError, match="failed over 1 file"):
        run_view({"resource": "Patient", "select": [{"column": [COLUMN]}]}, [bad])


def test_the_sql_runs_in_a_callers_connection(tmp_path: Path) -> None:
    import duckdb

    data = write(tmp_path / "p.ndjson", [{"resourceType": "Patient", "id": "a", "gender": "female"}])
    compiled = compile_view({"resource": "Patient", "select": [{"column": [COLUMN]}]})
    con = duckdb.connect()
    assert con.sql(compiled.sql([data])).fetchall() == [("a",)]
    assert run_view(compiled, [data], connection=con).num_rows == 1
    assert con.sql("SELECT 1").fetchall() == [(1,)]  # still open: the caller's connection is the caller's


def test_repeat_reaches_items_twelve_levels_deep_in_document_order(tmp_path: Path) -> None:
    item: dict[str, Any] = {"linkId": "12"}
    for level in range(11, 0, -1):
        item = {"linkId": str(level), "item": [item]}
    sibling = {"linkId": "last"}
    data = write(tmp_path / "q.ndjson", [{"resourceType": "QuestionnaireResponse", "id": "q", "item": [item, sibling]}])
    view = {
        "resource": "QuestionnaireResponse",
        "select": [
            {
                "repeat": ["item"],
                "column": [
                    {"name": "link", "path": "linkId", "type": "string"},
                    {"name": "n", "path": "%rowIndex", "type": "integer"},
                ],
            }
        ],
    }
    rows = run_view(view, [data]).to_pylist()
    assert sorted((r["n"], r["link"]) for r in rows) == [(i, str(i + 1)) for i in range(12)] + [(12, "last")]


def test_gzip_files_are_read(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "Patient.1.ndjson.gz"
    path.write_bytes(gzip.compress(b'{"resourceType": "Patient", "id": "gz"}\n'))
    assert run_view({"resource": "Patient", "select": [{"column": [COLUMN]}]}, [path]).to_pylist() == [{"id": "gz"}]


def test_expressions_beyond_the_suite(tmp_path: Path) -> None:
    patient = {
        "resourceType": "Patient", "id": "p", "active": True, "gender": "male", "birthDate": "1980-05-01",
        "name": [{"family": "F", "given": ["A", "B"]}, {"family": "G"}], "telecom": [{"value": "x"}],
    }  # fmt: skip
    data = write(tmp_path / "p.ndjson", [patient])
    cases = {
        "name.given | name.family | name.given": (["A", "B", "F", "G"], True),  # first appearance order
        "7 div 2": ("3", False),
        "1 / 4": ("0.25", False),
        "name.family.first() & ' ' & name.given.first()": ("F A", False),
        "active implies gender = 'female'": ("false", False),
        "name.where($index = 1).family": ("G", False),
        "'x' in telecom.value": ("true", False),
        "birthDate > @1990-01-01": ("false", False),
        "name.first().is(HumanName)": ("true", False),
        "name.last().family": ("G", False),
        "%resource.id": ("p", False),
        "name.exists(family = 'G')": ("true", False),
        "{}": (None, False),
    }
    columns = [{"name": f"c{i}", "path": path, "collection": coll} for i, (path, (_, coll)) in enumerate(cases.items())]
    row = run_view({"resource": "Patient", "select": [{"column": columns}]}, [data]).to_pylist()[0]
    assert [row[f"c{i}"] for i in range(len(cases))] == [want for want, _ in cases.values()]
