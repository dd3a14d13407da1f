"""Deterministic synthetic FHIR R4 data: Patients, Observations, Conditions and Encounters.

Every resource is a pure function of its patient number ``p`` (1-based) and its index ``j`` within
that patient, so the same settings always produce the same bytes. Lines are rendered from string
templates (no ``json.dumps`` on the hot path), which keeps generation far above 50 MB/s.

Ids: ``pat-0001``, ``obs-0001-003``, ``cond-0001-01``, ``enc-0001-01``. ``meta.lastUpdated`` is spread
over 2023 (always in the past), so ``_since`` filters meaningfully. Mutations (``touch`` / delete)
live in :class:`DataState`; an export works on a snapshot of it taken at kick-off.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

RESOURCE_TYPES = ("Patient", "Observation", "Condition", "Encounter")
CONDITIONS_PER_PATIENT = 2
ENCOUNTERS_PER_PATIENT = 2

EPOCH_MS = 1_672_531_200_000  # 2023-01-01T00:00:00Z
SPAN_MS = 365 * 86_400_000
_TYPE_SALT = {"Patient": 11, "Observation": 23, "Condition": 37, "Encounter": 53}
_ID_PREFIX = {"Patient": "pat", "Observation": "obs", "Condition": "cond", "Encounter": "enc"}
_ID_RE = {
    "Patient": re.compile(r"pat-(\d+)"),
    "Observation": re.compile(r"obs-(\d+)-(\d+)"),
    "Condition": re.compile(r"cond-(\d+)-(\d+)"),
    "Encounter": re.compile(r"enc-(\d+)-(\d+)"),
}

_FAMILY = (
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
)
_GIVEN = {
    "female": ("Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen"),
    "male": ("James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Charles"),
}
_CITIES = ("Boston", "Worcester", "Springfield", "Cambridge", "Lowell", "Brockton", "Quincy", "Lynn")

_OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
# (category, display, loinc, name, unit, low, spread)
_OBS_CODES = (
    ("laboratory", "Laboratory", "2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70.0, 80),
    ("vital-signs", "Vital Signs", "8867-4", "Heart rate", "/min", 55.0, 50),
    ("laboratory", "Laboratory", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11.0, 6),
    ("vital-signs", "Vital Signs", "8310-5", "Body temperature", "Cel", 36.0, 3),
    ("laboratory", "Laboratory", "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1),
    ("vital-signs", "Vital Signs", "29463-7", "Body weight", "kg", 50.0, 60),
    ("laboratory", "Laboratory", "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 140.0, 120),
    ("vital-signs", "Vital Signs", "9279-1", "Respiratory rate", "/min", 12.0, 10),
)
_OBS_CHUNKS = tuple(
    f'"category":[{{"coding":[{{"system":"{_OBS_CAT}","code":"{cat}","display":"{cat_display}"}}]}}],'
    f'"code":{{"coding":[{{"system":"http://loinc.org","code":"{code}","display":"{name}"}}],"text":"{name}"}},'
    for cat, cat_display, code, name, *_ in _OBS_CODES
)
_CONDITIONS = (
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("55822004", "Hyperlipidemia"),
    ("40055000", "Chronic sinusitis"),
    ("271737000", "Anemia"),
)
_COND_CAT = "http://terminology.hl7.org/CodeSystem/condition-category"
_COND_CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_ENC_CLASS = (("AMB", "ambulatory"), ("IMP", "inpatient encounter"), ("EMER", "emergency"))

_PATIENT = (
    '{"resourceType":"Patient","id":"%s","meta":{"versionId":"%d","lastUpdated":"%s"},'
    '"identifier":[{"system":"urn:oid:2.16.840.1.113883.4.1","value":"999-%02d-%04d"}],"active":true,'
    '"name":[{"use":"official","family":"%s","given":["%s"]}],"gender":"%s","birthDate":"%04d-%02d-%02d",'
    '"address":[{"city":"%s","state":"MA","postalCode":"0%04d","country":"US"}]}\n'
)
_OBSERVATION = (
    '{"resourceType":"Observation","id":"%s","meta":{"versionId":"%d","lastUpdated":"%s"},"status":"%s",%s'
    '"subject":{"reference":"Patient/pat-%04d"},%s"effectiveDateTime":"%s","issued":"%s",'
    '"valueQuantity":{"value":%.1f,%s}}\n'
)
_ENC_REF = '"encounter":{"reference":"Encounter/enc-%04d-%02d"},'
_OBS_VALUES = tuple(
    (f'"unit":"{unit}","system":"http://unitsofmeasure.org","code":"{unit}"', low, spread * 10 + 1)
    for *_, unit, low, spread in _OBS_CODES
)
_ID_FORMAT = {"Patient": "pat-%04d", "Observation": "obs-%04d-%%03d", "Condition": "cond-%04d-%%02d"}
_ID_FORMAT["Encounter"] = "enc-%04d-%%02d"
_CONDITION = (
    '{"resourceType":"Condition","id":"%s","meta":{"versionId":"%d","lastUpdated":"%s"},'
    '"clinicalStatus":{"coding":[{"system":"' + _COND_CLIN + '","code":"%s"}]},'
    '"verificationStatus":{"coding":[{"system":'
    '"http://terminology.hl7.org/CodeSystem/condition-ver-status","code":"confirmed"}]},'
    '"category":[{"coding":[{"system":"' + _COND_CAT + '","code":"%s"}]}],'
    '"code":{"coding":[{"system":"http://snomed.info/sct","code":"%s","display":"%s"}],"text":"%s"},'
    '"subject":{"reference":"Patient/pat-%04d"},"onsetDateTime":"%s","recordedDate":"%s"}\n'
)
_ENCOUNTER = (
    '{"resourceType":"Encounter","id":"%s","meta":{"versionId":"%d","lastUpdated":"%s"},"status":"finished",'
    '"class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"%s","display":"%s"},'
    '"type":[{"coding":[{"system":"http://snomed.info/sct","code":"185349003",'
    '"display":"Encounter for check up"}]}],"subject":{"reference":"Patient/pat-%04d"},'
    '"period":{"start":"%s","end":"%s"}}\n'
)


_DAYS: dict[int, str] = {}


def _iso(ms: int) -> str:
    """``2023-04-05T06:07:08.123Z``; the date part is cached per day (this runs once per resource)."""
    day, rest = divmod(ms, 86_400_000)
    date = _DAYS.get(day)
    if date is None:
        date = _DAYS[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))
    hour, rest = divmod(rest, 3_600_000)
    minute, rest = divmod(rest, 60_000)
    return "%sT%02d:%02d:%02d.%03dZ" % (date, hour, minute, *divmod(rest, 1000))  # noqa: UP031


@dataclass
class DataState:
    """Mutations on top of the deterministic data: touched (re-versioned) and deleted resources."""

    updated: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)  # type -> id -> (ms, ver)
    deleted: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> id -> deletion ms

    def snapshot(self) -> DataState:
        return DataState({t: dict(v) for t, v in self.updated.items()}, {t: dict(v) for t, v in self.deleted.items()})


class Dataset:
    """The resources of ``patients`` synthetic patients; ``resources_per_patient`` Observations each."""

    def __init__(self, patients: int = 20, resources_per_patient: int = 5) -> None:
        if patients < 0 or resources_per_patient < 0:
            raise ValueError("patients and resources_per_patient must be >= 0")
        self.patients = patients
        self.per_patient_counts = {
            "Patient": 1,
            "Observation": resources_per_patient,
            "Condition": CONDITIONS_PER_PATIENT,
            "Encounter": ENCOUNTERS_PER_PATIENT,
        }

    # -- identity -------------------------------------------------------------------------------

    def count(self, rtype: str) -> int:
        return self.patients * self.per_patient_counts[rtype]

    @staticmethod
    def resource_id(rtype: str, p: int, j: int = 1) -> str:
        if rtype == "Patient":
            return f"pat-{p:04d}"
        width = 3 if rtype == "Observation" else 2
        return f"{_ID_PREFIX[rtype]}-{p:04d}-{j:0{width}d}"

    def parse_id(self, rtype: str, rid: str) -> tuple[int, int] | None:
        """``(p, j)`` of an existing resource id, or None."""
        pattern = _ID_RE.get(rtype)
        match = pattern.fullmatch(rid) if pattern else None
        if not match:
            return None
        p = int(match.group(1))
        j = int(match.group(2)) if rtype != "Patient" else 1
        if not (1 <= p <= self.patients and 1 <= j <= self.per_patient_counts[rtype]):
            return None
        return p, j

    def ids(self, rtype: str, patients: Iterable[int] | None = None) -> Iterator[tuple[int, int, str]]:
        per = self.per_patient_counts[rtype]
        for p in range(1, self.patients + 1) if patients is None else patients:
            for j in range(1, per + 1):
                yield p, j, self.resource_id(rtype, p, j)

    @staticmethod
    def base_last_updated(rtype: str, p: int, j: int = 1) -> int:
        return EPOCH_MS + ((p * 7_919 + j * 104_729 + _TYPE_SALT[rtype]) * 2_654_435_761) % SPAN_MS

    # -- rendering ------------------------------------------------------------------------------

    def line(self, rtype: str, p: int, j: int, last_updated: int, version: int = 1) -> str:
        """One resource as one NDJSON line (with the trailing newline)."""
        return self._renderers[rtype](p, j, self.resource_id(rtype, p, j), last_updated, version)

    @property
    def _renderers(self) -> dict[str, Callable[[int, int, str, int, int], str]]:
        return {
            "Patient": self._patient,
            "Observation": self._observation,
            "Condition": self._condition,
            "Encounter": self._encounter,
        }

    def _patient(self, p: int, j: int, rid: str, last: int, version: int) -> str:
        gender = "female" if p % 2 else "male"
        given = _GIVEN[gender][(p // 2) % 10]
        return _PATIENT % (
            rid, version, _iso(last), p % 100, p % 10_000, _FAMILY[(p * 7) % 20], given, gender,
            1940 + (p * 7) % 70, p % 12 + 1, p % 28 + 1, _CITIES[p % 8], 1000 + p % 9000,
        )  # fmt: skip

    def _observation(self, p: int, j: int, rid: str, last: int, version: int) -> str:
        k = (p + j) % 8
        stamp = _iso(last)
        unit, low, spread = _OBS_VALUES[k]
        status = "amended" if version > 1 else ("preliminary" if (p * 3 + j) % 10 == 0 else "final")
        encounters = self.per_patient_counts["Encounter"]
        enc = _ENC_REF % (p, j % encounters + 1) if encounters else ""
        value = low + ((p * 37 + j * 11) % spread) / 10
        return _OBSERVATION % (rid, version, stamp, status, _OBS_CHUNKS[k], p, enc, stamp[:10], stamp, value, unit)

    def _condition(self, p: int, j: int, rid: str, last: int, version: int) -> str:
        code, name = _CONDITIONS[(p * 2 + j) % len(_CONDITIONS)]
        clinical = "resolved" if (p + j) % 3 == 0 else "active"
        category = "problem-list-item" if j % 2 else "encounter-diagnosis"
        stamp = _iso(last)
        return _CONDITION % (rid, version, stamp, clinical, category, code, name, name, p, stamp[:10], stamp)

    def _encounter(self, p: int, j: int, rid: str, last: int, version: int) -> str:
        cls, display = _ENC_CLASS[(p + j) % len(_ENC_CLASS)]
        return _ENCOUNTER % (rid, version, _iso(last), cls, display, p, _iso(last), _iso(last + 3_600_000))

    def iter_lines(
        self,
        rtype: str,
        state: DataState,
        *,
        patients: Iterable[int] | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[str]:
        """Lines of ``rtype`` (optionally for some patients) whose lastUpdated is in (since, until]."""
        updated = state.updated.get(rtype) or {}
        deleted = state.deleted.get(rtype) or {}
        low = -1 if since_ms is None else since_ms
        high = 1 << 62 if until_ms is None else until_ms
        render = self._renderers[rtype]
        per = self.per_patient_counts[rtype]
        salt = _TYPE_SALT[rtype]
        id_format = _ID_FORMAT[rtype]
        for p in range(1, self.patients + 1) if patients is None else patients:
            head = id_format % p
            for j in range(1, per + 1):
                rid = head if rtype == "Patient" else head % j
                if deleted and rid in deleted:
                    continue
                version = 1
                if updated and rid in updated:
                    last, version = updated[rid]
                else:
                    last = EPOCH_MS + ((p * 7_919 + j * 104_729 + salt) * 2_654_435_761) % SPAN_MS
                if low < last <= high:
                    yield render(p, j, rid, last, version)

    def resource(self, rtype: str, rid: str, state: DataState) -> str | None:
        """One resource's JSON line, or None when unknown or deleted."""
        parsed = self.parse_id(rtype, rid)
        if parsed is None or rid in state.deleted.get(rtype, {}):
            return None
        last, version = state.updated.get(rtype, {}).get(rid, (self.base_last_updated(rtype, *parsed), 1))
        return self.line(rtype, *parsed, last, version)
