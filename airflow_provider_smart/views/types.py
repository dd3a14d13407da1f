"""What each declared FHIR column type becomes: a DuckDB type and an Arrow type, and how JSON values convert.

- boolean -> bool; integer, integer64, positiveInt, unsignedInt -> int64;
- decimal -> decimal128(38, 9) (FHIR decimals are exact; 9 fractional digits, 29 integer digits);
- date -> date32 (a partial date, ``1970`` or ``1970-06``, becomes the first day of its period);
- dateTime, instant -> timestamp[us, UTC] (a dateTime without a time is midnight UTC; partial ones as dates);
- time -> time64[us]; everything else (string, code, id, uri, url...) -> string;
- no declared type -> string: the value's text, or its JSON when it is not a primitive.

A value that does not fit its column (text in an integer column, a malformed date) becomes null.
``collection: true`` columns are lists of those types.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

INTEGER_TYPES = frozenset({"integer", "integer64", "positiveInt", "unsignedInt"})
DATETIME_TYPES = frozenset({"dateTime", "instant"})
DECIMAL_PRECISION, DECIMAL_SCALE = 38, 9


def duckdb_type(fhir_type: str | None) -> str:
    if fhir_type == "boolean":
        return "BOOLEAN"
    if fhir_type in INTEGER_TYPES:
        return "BIGINT"
    if fhir_type == "decimal":
        return f"DECIMAL({DECIMAL_PRECISION},{DECIMAL_SCALE})"
    if fhir_type == "date":
        return "DATE"
    if fhir_type in DATETIME_TYPES:
        return "TIMESTAMPTZ"
    if fhir_type == "time":
        return "TIME"
    return "VARCHAR"


def arrow_type(fhir_type: str | None, collection: bool = False) -> pa.DataType:
    import pyarrow as pa

    if fhir_type == "boolean":
        base = pa.bool_()
    elif fhir_type in INTEGER_TYPES:
        base = pa.int64()
    elif fhir_type == "decimal":
        base = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
    elif fhir_type == "date":
        base = pa.date32()
    elif fhir_type in DATETIME_TYPES:
        base = pa.timestamp("us", tz="UTC")
    elif fhir_type == "time":
        base = pa.time64("us")
    else:
        base = pa.string()
    return pa.list_(base) if collection else base
