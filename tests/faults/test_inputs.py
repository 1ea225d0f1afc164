"""Hostile and fuzzed input files, for every reader of `mahn prepare`.

The rule: a reader reads a file or refuses it with a `DataError` whose message names the file (and line where
there is one), on one line; any other exception is a crash. Each reader gets Hypothesis-generated files and
mutated real ones: the first lines of the files in ../shared/data, taken at test time (never stored here) and
damaged with a seeded generator. Then one explicit test for each bound: gigantic lines (and gzip bombs), deep
nesting, invalid UTF-8, mixed line endings and decompression-bomb images.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import struct
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger import record, scaled

from mahn.errors import DataError
from mahn.readers import READERS, ReaderOptions, common
from mahn.readers.common import INTERACTION_SCHEMA

LINES = 200  # real lines taken from each shared file
TEST_CAP = 32 << 10  # MAX_LINE while fuzzing: above every real line of the shared files' first lines (~8 k)

# --- the readers, each with the file it is fed: a small valid pair and the real one ---


def head(path: Path, lines: int = LINES) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return b"".join(f.readline() for _ in range(lines))


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def office_items(data: Path) -> list[dict]:
    return [json.loads(line) for line in head(data / "amazon2014-office" / "items.jsonl").splitlines()]


def meta_2014(data: Path) -> bytes:  # the 2014 metadata is Python literals: real text written as McAuley's repr
    return "".join(repr({"asin": r["item"], "title": r.get("title"), "description": r.get("description"),
                         "brand": r.get("brand"), "categories": [["Office Products"]], "price": 9.99,
                         "imUrl": f"http://ecx.images-amazon.com/images/I/{r['item']}.jpg"}) + "\n"
                   for r in office_items(data)).encode()


def meta_2018(data: Path) -> bytes:
    return jsonl({"asin": r["item"], "title": r.get("title"), "description": [r.get("description") or ""],
                  "brand": r.get("brand"), "category": ["Office Products"], "price": "$9.99",
                  "imageURLHighRes": [f"https://images-na.ssl-images-amazon.com/images/I/{r['item']}.jpg"]}
                 for r in office_items(data))


def reviews(data: Path) -> bytes:
    return head(data / "amazon2014-phones" / "reviews_sample_5.json.gz")


def transactions(data: Path) -> bytes:
    return head(data / "hm-sample" / "transactions.csv")


def articles(data: Path) -> bytes:
    return head(data / "hm-sample" / "articles.csv")


def recbole_inter(data: Path) -> bytes:
    frame = pl.read_csv(transactions(data), infer_schema=False)
    seconds = frame["t_dat"].str.to_date().cast(pl.Datetime("us")).dt.epoch("s")
    rows = zip(frame["customer_id"], frame["article_id"], seconds, strict=True)
    lines = "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows)
    return ("user_id:token\titem_id:token\ttimestamp:float\n" + lines).encode()


def recbole_item(data: Path) -> bytes:
    frame = pl.read_csv(articles(data), infer_schema=False).fill_null("")
    lines = ["item_id:token\ttitle:token_seq\tcolour:token\tproduct_type_no:float\tdescription:token_seq"]
    lines += ["\t".join(v.replace("\t", " ") for v in row)
              for row in frame.select("article_id", "prod_name", "colour_group_name", "product_type_no",
                                      "detail_desc").rows()]
    return ("\n".join(lines) + "\n").encode()


def parquet(text: bytes) -> bytes:
    out = io.BytesIO()
    pl.read_csv(text, infer_schema=False).write_parquet(out)
    return out.getvalue()


REVIEW = '{"reviewerID": "U1", "asin": "A", "unixReviewTime": 1400630400}\n{"reviewerID": "U2", "asin": "B", ' \
         '"reviewTime": "05 21, 2014"}\n'
CSV = "user,item,time\nu1,a,1\nu2,b,2020-01-02\n"
HM = ReaderOptions(user_col="customer_id", item_col="article_id", time_col="t_dat", title_col="prod_name",
                   text_cols=("detail_desc",))
SMALL = ReaderOptions(time_col="time")


@dataclass(frozen=True)
class Case:
    fmt: str  # the key in READERS
    inter: str  # file names; a .gz one is written compressed
    items: str | None
    target: str  # "inter" or "items": the file that is generated or mutated, the other one stays valid
    good: tuple[bytes, bytes | None]  # a small valid pair, the base of generated files
    real: Callable[[Path], tuple[bytes, bytes | None]]  # the same from ../shared/data
    options: ReaderOptions | None = None
    real_options: ReaderOptions | None = None

    def options_for(self, real: bool) -> ReaderOptions | None:
        return self.real_options if real else self.options


SEQUENCE = b"u1 a b c\nu2 b c\n"
CASES = {
    "sequences": Case("sequences", "user_sequence.txt", None, "inter", (SEQUENCE, None),
                      lambda d: (head(d / "amazon2014-office" / "user_sequence.txt"), None)),
    "items.jsonl": Case("sequences", "user_sequence.txt", "items.jsonl", "items",
                        (SEQUENCE, b'{"item": "a", "title": "t", "codes": [1, 2]}\n'),
                        lambda d: (head(d / "amazon2014-office" / "user_sequence.txt", 5),
                                   head(d / "amazon2014-office" / "items.jsonl", LINES // 2)
                                   + head(d / "amazon2018-instruments" / "items.jsonl", LINES // 2))),
    "amazon2014": Case("amazon2014", "reviews.json.gz", None, "inter", (REVIEW.encode(), None),
                       lambda d: (reviews(d), None)),
    "amazon2014-meta": Case("amazon2014", "reviews.json", "meta.json", "items",
                            (REVIEW.encode(), b"{'asin': 'A', 'title': 't', 'categories': [['c']], 'price': 1.5}\n"),
                            lambda d: (REVIEW.encode(), meta_2014(d))),
    "amazon2018": Case("amazon2018", "reviews.json", None, "inter", (REVIEW.encode(), None),
                       lambda d: (reviews(d), None)),
    "amazon2018-meta": Case("amazon2018", "reviews.json", "meta.json", "items",
                            (REVIEW.encode(), b'{"asin": "A", "title": "t", "imageURL": ["http://x/a.jpg"]}\n'),
                            lambda d: (REVIEW.encode(), meta_2018(d))),
    "recbole": Case("recbole", "x.inter", None, "inter",
                    (b"user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1\nu2\tb\t2\n", None),
                    lambda d: (recbole_inter(d), None)),
    "recbole-item": Case("recbole", "x.inter", "x.item", "items",
                         (b"user_id:token\titem_id:token\nu1\ta\n",
                          b"item_id:token\ttitle:token_seq\tprice:float\tv:float_seq\na\tt\t1.5\t1 2\n"),
                         lambda d: (b"user_id:token\titem_id:token\nu1\ta\n", recbole_item(d))),
    "csv": Case("csv", "transactions.csv", None, "inter", (CSV.encode(), None),
                lambda d: (transactions(d), None), SMALL, HM),
    "csv-items": Case("csv", "transactions.csv", "articles.csv", "items",
                      (CSV.encode(), b"item,title,text,image\na,t,x,\nb,,y,http://x/b.jpg\n"),
                      lambda d: (transactions(d), articles(d)), SMALL, HM),
    "csv.gz": Case("csv", "transactions.csv.gz", None, "inter", (CSV.encode(), None),
                   lambda d: (transactions(d), None), SMALL, HM),
    "tsv": Case("csv", "transactions.tsv", None, "inter", (CSV.replace(",", "\t").encode(), None),
                lambda d: (transactions(d).replace(b",", b"\t"), None), SMALL, HM),
    "parquet": Case("csv", "transactions.parquet", None, "inter", (parquet(CSV.encode()), None),
                    lambda d: (parquet(transactions(d)), None), SMALL, HM),
}


# --- one attempt: the reader reads the files, or refuses them naming the damaged one ---


class Crash(AssertionError):
    """Anything but a clear DataError: another exception, or a message that does not name the file."""


def read(case: Case, folder: Path, inter: bytes, items: bytes | None, real: bool = False,
         gz_damage: Callable[[bytes], bytes] | None = None) -> str:
    """'accepted' or 'refused'; raises Crash for anything else."""
    paths = {"inter": folder / case.inter, "items": folder / case.items if case.items else None}
    for role, data in (("inter", inter), ("items", items)):
        if paths[role] is None:
            continue
        if paths[role].name.endswith(".gz"):
            data = gzip.compress(data, 1)
            if gz_damage and role == case.target:
                data = gz_damage(data)
        paths[role].write_bytes(data)
    target = paths[case.target]
    try:
        source = READERS[case.fmt](paths["inter"], items=paths["items"], options=case.options_for(real))
        chunks = list(source.interactions)
    except DataError as e:
        message = str(e)
        if target.name not in message or "\n" in message or "\r" in message:
            raise Crash(f"unclear refusal: {message[:500]!r}") from e
        return "refused"
    except BaseException as e:  # noqa: BLE001 - a polars panic is a BaseException
        if isinstance(e, KeyboardInterrupt):
            raise
        raise Crash(f"{type(e).__name__}: {str(e)[:500]}") from e
    for chunk in chunks:
        assert chunk.schema == pl.Schema(INTERACTION_SCHEMA)
    assert source.items is None or source.items["item"].is_unique().all()
    return "accepted"


# --- Hypothesis: generated files ---

PIECES = list('{}[]()"\':,\t\n\r .-+0123456789eEaAuUtrnfl\\#') + [
    "\r\n", "\n\n", "reviewerID", "asin", "unixReviewTime", "reviewTime", "title", "imUrl", "description",
    "item", "user", "time", "categories", "price", "imageURLHighRes", "null", "true", "None", "b'\\xff'",
    ":token", ":float", ":token_seq", ":float_seq", "\\u00e9", "\\ud800", "2018-09-20", "1e999", "nan", "-inf",
    "2" * 25, "\x00", "é", "\ufeff", "[" * 2000, "(" * 300, "-" * 3000, "{'a': " * 300, '{"a": ' * 2000, "u1 a",
    "u1\ta\t1", "u1,a,1"]
GENERATED = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from(PIECES), max_size=60).map(lambda parts: "".join(parts).encode()),
    st.lists(st.one_of(st.sampled_from(PIECES).map(str.encode), st.binary(max_size=4)), max_size=40).map(b"".join),
)


# well-formed files of odd records: JSON values of any type and depth under the reader's keys, texts in fields
TEXT = st.text(max_size=12)
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
                    max_leaves=8)
PLAUSIBLE = st.sampled_from(["U1", "A", "B", 1400630400, "05 21, 2014", "1400630400", 1.4e9, "", " ", "a/../..",
                             "/etc/hostname", "x.jpg", "http://x/a.jpg", ["http://x/a.jpg"], [["c", "d"]], "$9.99"])

SURROGATES = st.text(st.characters(categories=["Cs", "Ll", "So"]), max_size=4)  # repr writes them as \\u escapes


def json_records(keys: list[str], literal: bool = False) -> st.SearchStrategy[bytes]:
    values = st.one_of(PLAUSIBLE, JSON, *([st.binary(max_size=6), st.tuples(JSON), st.complex_numbers(),
                                           st.frozensets(st.integers(), max_size=2), SURROGATES] if literal else []))
    record = st.dictionaries(st.one_of(st.sampled_from(keys), TEXT), values, max_size=len(keys) + 1)
    dump = repr if literal else (lambda r: json.dumps(r, ensure_ascii=False))
    return st.lists(record, min_size=1, max_size=6).map(
        lambda rows: "".join(dump(r) + "\n" for r in rows).encode("utf-8", "surrogatepass"))


def table(header: list[str], separator: str, values: st.SearchStrategy = TEXT) -> st.SearchStrategy[bytes]:
    width = len(header)
    rows = st.lists(st.lists(st.one_of(values, PLAUSIBLE.map(str)), min_size=width, max_size=width), max_size=6)
    if separator == ",":
        def dump(table_rows):
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows([header] + table_rows)
            return out.getvalue()
    else:
        def dump(table_rows):
            return "".join(separator.join(row) + "\n" for row in [header] + table_rows)
    return rows.map(lambda r: dump(r).encode("utf-8", "surrogatepass"))


def frames() -> st.SearchStrategy[bytes]:
    """Parquet files whose user, item and time columns have any type Polars writes."""
    def column(kind, n):
        return {"str": st.lists(st.one_of(st.none(), TEXT), min_size=n, max_size=n).map(pl.Series),
                "int": st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), min_size=n, max_size=n)
                .map(lambda v: pl.Series(v, dtype=pl.Int64)),
                "float": st.lists(st.floats(), min_size=n, max_size=n).map(pl.Series),
                "bool": st.lists(st.booleans(), min_size=n, max_size=n).map(pl.Series),
                "date": st.lists(st.dates(), min_size=n, max_size=n).map(pl.Series),
                "datetime": st.lists(st.datetimes(), min_size=n, max_size=n).map(pl.Series),
                "list": st.lists(st.lists(st.integers(0, 9), max_size=2), min_size=n, max_size=n)
                .map(lambda v: pl.Series(v, dtype=pl.List(pl.Int64))),
                "struct": st.lists(st.fixed_dictionaries({"a": st.integers(0, 9)}), min_size=n, max_size=n)
                .map(pl.Series),
                "duration": st.lists(st.timedeltas(-timedelta(days=10**5), timedelta(days=10**5)), min_size=n,
                                     max_size=n).map(lambda v: pl.Series(v, dtype=pl.Duration("us")))}[kind]

    kinds = st.sampled_from(["str", "int", "float", "bool", "date", "datetime", "list", "struct", "duration"])

    @st.composite
    def frame(draw):
        n = draw(st.integers(0, 5))
        columns = {name: draw(column(draw(kinds), n)) for name in ("user", "item", "time")}
        out = io.BytesIO()
        pl.DataFrame(columns).write_parquet(out)
        return out.getvalue()

    return frame()


REVIEW_KEYS = ["reviewerID", "asin", "unixReviewTime", "reviewTime", "overall"]
STRUCTURED = {
    "sequences": st.lists(st.lists(TEXT, max_size=5).map(" ".join), max_size=6).map(
        lambda lines: "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")),
    "items.jsonl": json_records(["item", "title", "text", "description", "image", "codes"]),
    "amazon2014": json_records(REVIEW_KEYS),
    "amazon2014-meta": json_records(["asin", "title", "description", "imUrl", "brand", "categories", "price",
                                     "salesRank"], literal=True),
    "amazon2018": json_records(REVIEW_KEYS),
    "amazon2018-meta": json_records(["asin", "title", "description", "imageURL", "imageURLHighRes", "brand",
                                     "category", "price", "feature"]),
    "recbole": table(["user_id:token", "item_id:token", "timestamp:float"], "\t"),
    "recbole-item": table(["item_id:token", "title:token_seq", "movie_title:token", "price:float", "v:float_seq"],
                          "\t"),
    "csv": table(["user", "item", "time"], ","),
    "csv-items": table(["item", "title", "text", "image", "extra"], ","),
    "csv.gz": table(["user", "item", "time"], ",", st.one_of(TEXT, st.integers().map(str), st.dates().map(str))),
    "tsv": table(["user", "item", "time"], "\t"),
    "parquet": frames(),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_inputs_are_read_or_refused_clearly(name, tmp_path):
    """Hypothesis writes the reader's file: random bytes, pieces of its syntax, either after a valid start, or a
    well-formed file of odd records (any JSON value under the reader's keys, any text in a table's fields)."""
    case = CASES[name]
    counts: Counter = Counter()
    good_inter, good_items = case.good
    base = good_inter if case.target == "inter" else good_items

    @settings(max_examples=scaled(60), deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(body=st.one_of(GENERATED, STRUCTURED[name]), after_valid=st.booleans(),
           edits=st.lists(st.tuples(st.integers(0), st.binary(max_size=3)), max_size=4))
    def check(body, after_valid, edits):
        if name == "parquet":  # a frame of odd columns, or bytes of a valid file changed in place
            data = body if body.startswith(b"PAR1") else base
            for position, replacement in edits:
                at = position % (len(data) + 1)
                data = data[:at] + replacement + data[at + max(1, len(replacement)):]
        else:
            data = (base if after_valid else b"") + body
        counts["tried"] += 1
        try:
            if case.target == "inter":
                counts[read(case, tmp_path, data, good_items)] += 1
            else:
                counts[read(case, tmp_path, good_inter, data)] += 1
        except Crash:
            counts["crashed"] += 1
            raise

    try:
        check()
    finally:
        record("input", name, tried=counts["tried"], refused=counts["refused"], accepted=counts["accepted"],
               crashed=counts["crashed"])
    # random bytes and broken syntax must meet the reader's refusal, not only pass through it
    assert counts["refused"] > 0, counts


# --- mutated real files ---

BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3(", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]
NESTED = ["[" * 100_000, '{"a": ' * 50_000, "(" * 100_000, "-" * 100_000 + "1", "{'a': " * 50_000, "1+" * 100_000 + "1",
          "not " * 30_000 + "1", "a" + ".a" * 100_000]


def split_lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) or [b""]


def mutation(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One seeded change: bytes flipped, inserted or deleted, lines cut, repeated or dropped, invalid UTF-8, a
    gigantic line, deep nesting, other line endings, a byte-order mark, odd numbers or separators."""
    at = rng.randrange(len(data) + 1)
    lines = split_lines(data)
    row = rng.randrange(len(lines))
    kind = rng.choice(["flip", "insert", "delete", "truncate", "duplicate", "drop", "utf8", "huge", "nested",
                       "endings", "bom", "number", "separator", "escape", "swap"])
    if kind == "flip" and data:
        at = min(at, len(data) - 1)
        return kind, data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    if kind == "insert":
        return kind, data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]
    if kind == "delete":
        return kind, data[:at] + data[at + rng.randint(1, 50):]
    if kind == "truncate":
        return kind, data[:at]
    if kind == "duplicate":
        return kind, b"".join(lines[:row + 1] + [lines[row]] * rng.randint(1, 3) + lines[row + 1:])
    if kind == "drop":
        return kind, b"".join(lines[:row] + lines[row + 1:])
    if kind == "utf8":
        return kind, data[:at] + rng.choice(BAD_UTF8) + data[at:]
    if kind == "huge":
        text = lines[row].rstrip(b"\r\n") or b"x"
        huge = (text * (TEST_CAP // len(text) + 2))[:TEST_CAP + rng.randint(1, TEST_CAP)]
        return kind, b"".join(lines[:row] + [huge + rng.choice([b"\n", b"\r\n", b""])] + lines[row + 1:])
    if kind == "nested":
        nested = rng.choice(NESTED).encode()
        if rng.random() < 0.5:
            return kind, b"".join(lines[:row] + [nested + b"\n"] + lines[row + 1:])
        return kind, data[:at] + nested + data[at:]
    if kind == "endings":
        ending = rng.choice([b"\r\n", b"\r", b"\n\r", b"\n\n"])
        if rng.random() < 0.5:
            return kind, data.replace(b"\n", ending)
        return kind, b"".join(line.rstrip(b"\r\n") + (ending if rng.random() < 0.3 else b"\n") for line in lines)
    if kind == "bom":
        return kind, b"\xef\xbb\xbf" + data
    if kind == "number":
        odd = rng.choice([b"9" * 30, b"-1", b"1e999", b"nan", b"-0", b"0x1F", b"", b"99999999999999999999"])
        digits = [i for i in range(len(data)) if data[i:i + 1].isdigit()]
        if digits:
            at = rng.choice(digits)
            end = at
            while end < len(data) and data[end:end + 1].isdigit():
                end += 1
            return kind, data[:at] + odd + data[end:]
        return kind, data[:at] + odd + data[at:]
    if kind == "separator":
        old, new = rng.sample([b",", b"\t", b" ", b'"', b"'", b":", b""], 2)
        return kind, data.replace(old, new, rng.randint(1, 5)) if old in data else data[:at] + new + data[at:]
    if kind == "escape":  # a backslash escape, as JSON or Python reads it: half a surrogate pair, unfinished, unknown
        escape = rng.choice([b"\\ud800", b"\\udfff", b"\\ud83d\\ude00", b"\\U0010ffff", b"\\U00110000", b"\\x",
                             b"\\N{nothing}", b"\\", b"\\u12"])
        return kind, data[:at] + escape + data[at:]
    other = rng.randrange(len(lines))  # swap two lines
    lines[row], lines[other] = lines[other], lines[row]
    return "swap", b"".join(lines)


def damage_gzip(rng: random.Random) -> Callable[[bytes], bytes] | None:
    """Sometimes: the compressed stream cut short or with a byte changed."""
    choice = rng.random()
    if choice < 0.15:
        return lambda data: data[:rng.randrange(len(data))]
    if choice < 0.25:
        def flip(data: bytes) -> bytes:
            at = rng.randrange(len(data))
            return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
        return flip
    return None


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(CASES))
def test_mutated_real_inputs_are_read_or_refused_clearly(name, shared_data, tmp_path, monkeypatch):
    """The first lines of the real file, changed 1-3 times per input by a seeded generator."""
    monkeypatch.setattr(common, "MAX_LINE", TEST_CAP)
    case = CASES[name]
    real_inter, real_items = case.real(shared_data)
    assert read(case, tmp_path, real_inter, real_items, real=True) == "accepted"  # the unchanged files are valid
    original = real_inter if case.target == "inter" else real_items
    counts: Counter = Counter()
    crashes = []
    for seed in range(scaled(150)):
        rng = random.Random(f"{name}-{seed}")
        data, changes = original, []
        for _ in range(rng.randint(1, 3)):
            kind, data = mutation(rng, data)
            changes.append(kind)
        pair = (data, real_items) if case.target == "inter" else (real_inter, data)
        counts["tried"] += 1
        try:
            counts[read(case, tmp_path, *pair, real=True, gz_damage=damage_gzip(rng))] += 1
        except Crash as e:
            counts["crashed"] += 1
            crashes.append(f"seed {seed} {changes}: {e}")
    record("input", name, tried=counts["tried"], refused=counts["refused"], accepted=counts["accepted"],
           crashed=counts["crashed"])
    assert not crashes, "\n".join(crashes[:5])
    assert counts["refused"] > 0


# --- the bounds, one by one ---

# a valid start for each reader (the line the damage comes after), and how a line of it reads
STARTS = {
    "sequences": ("s.txt", None, "u1 a b\nu2 a c\n"),
    "items.jsonl": ("s.txt", "items.jsonl", '{"item": "a"}\n{"item": "b"}\n'),
    "amazon2014": ("r.json", None, REVIEW),
    "amazon2014-meta": ("r.json", "meta.json", "{'asin': 'A'}\n{'asin': 'B'}\n"),
    "amazon2018": ("r.json", None, REVIEW),
    "amazon2018-meta": ("r.json", "meta.json", '{"asin": "A"}\n{"asin": "B"}\n'),
    "recbole": ("x.inter", None, "user_id:token\titem_id:token\nu1\ta\n"),
    "recbole-item": ("x.inter", "x.item", "item_id:token\ttitle:token_seq\na\tt\n"),
    "csv": ("x.csv", None, "user,item\nu1,a\n"),
    "csv-items": ("x.csv", "items.csv", "item,title\na,t\n"),
    "csv.gz": ("x.csv.gz", None, "user,item\nu1,a\n"),
    "tsv": ("x.tsv", None, "user\titem\nu1\ta\n"),
}
FORMATS = {"sequences": "sequences", "items.jsonl": "sequences", "amazon2014": "amazon2014",
           "amazon2014-meta": "amazon2014", "amazon2018": "amazon2018", "amazon2018-meta": "amazon2018",
           "recbole": "recbole", "recbole-item": "recbole", "csv": "csv", "csv-items": "csv", "csv.gz": "csv",
           "tsv": "csv"}
LINE = {  # a valid line n of each, after the start
    "sequences": "u{n} a b", "items.jsonl": '{{"item": "i{n}"}}', "amazon2014-meta": "{{'asin': 'i{n}'}}",
    "amazon2014": '{{"reviewerID": "U{n}", "asin": "A", "unixReviewTime": {n}}}',
    "amazon2018": '{{"reviewerID": "U{n}", "asin": "A", "unixReviewTime": {n}}}',
    "amazon2018-meta": '{{"asin": "i{n}"}}', "recbole": "u{n}\ta", "recbole-item": "i{n}\tt", "csv": "u{n},a",
    "csv-items": "i{n},t", "csv.gz": "u{n},a", "tsv": "u{n}\ta"}
GOOD_INTER = {"sequences": "u1 a b\n", "amazon2014": REVIEW, "amazon2018": REVIEW,
              "recbole": "user_id:token\titem_id:token\nu1\ta\n", "csv": "user,item\nu1,a\n"}


def files_with(tmp_path: Path, name: str, text: bytes) -> tuple[Path, Path | None, Path]:
    """The reader's two files, `text` in the one under test; returns (interactions, items, the one under test)."""
    inter_name, items_name, _ = STARTS[name]
    fmt = FORMATS[name]
    target = tmp_path / (items_name or inter_name)
    target.write_bytes(gzip.compress(text) if target.name.endswith(".gz") else text)
    if not items_name:
        return target, None, target
    inter = tmp_path / inter_name
    inter.write_text(GOOD_INTER[fmt])
    return inter, target, target


def refusal(tmp_path: Path, name: str, text: bytes) -> str:
    inter, items, _ = files_with(tmp_path, name, text)
    with pytest.raises(DataError) as error:
        list(READERS[FORMATS[name]](inter, items=items).interactions)
    return str(error.value)


def rows_of(tmp_path: Path, name: str, text: bytes) -> tuple[list, list | None]:
    inter, items, _ = files_with(tmp_path, name, text)
    source = READERS[FORMATS[name]](inter, items=items)
    rows = [row for chunk in source.interactions for row in chunk.rows()]
    return rows, None if source.items is None else source.items.rows()


@pytest.mark.parametrize("name", sorted(STARTS))
def test_a_gigantic_line_is_refused_with_its_file_and_line(name, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "MAX_LINE", 1000)
    _, _, start = STARTS[name]
    for ending in ("\n", ""):
        message = refusal(tmp_path, name, (start + "x" * 1001 + ending + start.splitlines()[-1] + "\n").encode())
        target = STARTS[name][1] or STARTS[name][0]
        assert f"{target}:3: line longer than 1000 " in message, message


@pytest.mark.parametrize("name", ["sequences", "csv.gz", "recbole"])  # gzip, gzip, plain
def test_a_gzip_bomb_or_huge_line_is_read_no_further_than_the_line_cap(name, tmp_path):
    """256 MiB of one line gzipped to ~250 kB, or 64 MiB of one line in a plain file: refused after reading MAX_LINE
    (16 MiB) of it, never held whole."""
    inter_name = {"sequences": "s.txt.gz", "csv.gz": "x.csv.gz", "recbole": "x.inter"}[name]
    head_line = {"sequences": b"u1 a b\n", "csv.gz": b"user,item\n", "recbole": b"user_id:token\titem_id:token\n"}[name]
    path = tmp_path / inter_name
    if name == "recbole":
        path.write_bytes(head_line + b"a" * (64 << 20))
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip container
        parts = [compressor.compress(head_line)] + [compressor.compress(b"a" * (1 << 20)) for _ in range(256)]
        path.write_bytes(b"".join(parts) + compressor.flush())
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DataError, match=rf"{inter_name}:2: line longer than {common.MAX_LINE} "):
            list(READERS[FORMATS[name]](path).interactions)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * common.MAX_LINE + (8 << 20), f"peak {peak >> 20} MiB"  # the line is 64-256 MiB
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("name", ["items.jsonl", "amazon2014", "amazon2014-meta", "amazon2018", "amazon2018-meta"])
@pytest.mark.parametrize("nested", NESTED[:5])
def test_deep_nesting_is_refused_with_its_file_and_line(name, nested, tmp_path):
    _, _, start = STARTS[name]
    message = refusal(tmp_path, name, (start + nested + "\n").encode())
    target = STARTS[name][1] or STARTS[name][0]
    assert f"{target}:3: malformed" in message, message


def test_a_long_python_literal_is_refused_before_it_is_parsed(tmp_path):
    """ast takes ~500 times a literal's size in memory: a record that is not JSON is parsed as Python only up to
    MAX_LITERAL (1 MiB) characters."""
    tuples = "(" + "0," * 600_000 + ")"  # 1.2 MB, not JSON: ~600 MB if parsed
    message = refusal(tmp_path, "amazon2014-meta", ("{'asin': 'A'}\n{'asin': 'B'}\n" + tuples + "\n").encode())
    assert f"meta.json:3: malformed record: not JSON, and over {common.MAX_LITERAL} characters" in message, message


@pytest.mark.parametrize("name", sorted(STARTS))
@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"\xed\xa0\x80"])
def test_invalid_utf8_is_refused_with_its_file_and_line(name, bad, tmp_path):
    """Past the decoder's first block (8 kB) too: the line is the one with the byte, not the block's first."""
    _, _, start = STARTS[name]
    for before in (0, 3000):
        lines = start + "".join(LINE[name].format(n=n) + "\n" for n in range(10, 10 + before))
        message = refusal(tmp_path, name, lines.encode() + b"x" + bad + b"y\n" + start.splitlines()[-1].encode())
        target = STARTS[name][1] or STARTS[name][0]
        assert f"{target}:{3 + before}: not UTF-8 text" in message, message
        assert "at byte 2 of the line" in message, message


TEXT_FORMATS = ["sequences", "items.jsonl", "amazon2014", "amazon2014-meta", "amazon2018", "amazon2018-meta"]
MIXED = {
    "sequences": ["u1 a b", "u2 b c", "u3 c d", "u4 d a"],
    "items.jsonl": ['{"item": "a", "title": "A"}', '{"item": "b"}', '{"item": "c"}', '{"item": "d"}'],
    "amazon2014": [json.dumps({"reviewerID": f"U{n}", "asin": "A", "unixReviewTime": n}) for n in range(4)],
    "amazon2014-meta": [repr({"asin": a, "title": a * 2}) for a in "abcd"],
    "amazon2018": [json.dumps({"reviewerID": f"U{n}", "asin": "A", "unixReviewTime": n}) for n in range(4)],
    "amazon2018-meta": [json.dumps({"asin": a, "title": a * 2}) for a in "abcd"],
    "recbole": ["user_id:token\titem_id:token", "u1\ta", "u2\tb", "u3\tc"],
    "recbole-item": ["item_id:token\ttitle:token_seq", "a\tA", "b\tB", "c\tC"],
    "csv": ["user,item", "u1,a", "u2,b", "u3,c"],
    "csv-items": ["item,title", "a,A", '"b","B"', "c,C"],
    "csv.gz": ["user,item", "u1,a", "u2,b", "u3,c"],
    "tsv": ["user\titem", "u1\ta", "u2\tb", "u3\tc"],
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_line_endings_are_read_or_refused_with_the_line(name, tmp_path):
    """\\n and \\r\\n, mixed, read as \\n in every format; a lone \\r ends a line in the text formats (JSON lines,
    sequences) and is refused, naming its line, in the tables (csv/tsv, RecBole), which Polars splits at \\n."""
    lines = MIXED[name]
    plain = rows_of(tmp_path, name, ("\n".join(lines) + "\n").encode())
    assert plain[0] or plain[1]
    assert rows_of(tmp_path, name, ("\r\n".join(lines) + "\r\n").encode()) == plain
    mixed = lines[0] + "\r\n" + lines[1] + "\n" + lines[2] + "\r\n" + lines[3]
    assert rows_of(tmp_path, name, mixed.encode()) == plain
    assert rows_of(tmp_path, name, ("\ufeff" + "\n".join(lines) + "\n").encode()) == plain  # a byte-order mark
    lone = lines[0] + "\n" + lines[1] + "\r" + lines[2] + "\r\n" + lines[3] + "\r"
    if name in TEXT_FORMATS:
        assert rows_of(tmp_path, name, lone.encode()) == plain
    else:
        target = STARTS[name][1] or STARTS[name][0]
        assert f"{target}:2: " in refusal(tmp_path, name, lone.encode())
        message = refusal(tmp_path, name, lone.replace("\n", "\r").encode())
        assert f"{target}:1: the header line ends in a lone carriage return" in message, message


# --- decompression bombs ---


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height black pixels: a few hundred kB for 900 M pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    pixels = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000))
    pixels += compressor.compress(row * (height % 1000)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(30000, 30000), (10000, 10000), (7000, 7000)])
def test_a_decompression_bomb_image_is_a_failed_image_not_a_decoded_one(width, height, tmp_path, recwarn):
    """900 M pixels (PIL refuses it), 100 M (PIL only warns) and 49 M (under PIL's limits): all over MAX_PIXELS,
    each a failed image with the reason, found from the header before any pixel is decoded."""
    from mahn.features.encoders.images import MAX_PIXELS, load_image_or_error

    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(width, height))
    assert path.stat().st_size < 1 << 20
    started = time.perf_counter()
    reason = load_image_or_error(str(path), 224)
    assert isinstance(reason, str) and f"over the {MAX_PIXELS} pixel limit" in reason, reason
    assert time.perf_counter() - started < 2  # decoding 900 M pixels would take far longer (and ~1 GB)
