"""The source-format readers of `mahn prepare`: real records where ../shared/data has them, small files otherwise."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mahn.errors import DataError
from mahn.readers import READERS, ReaderOptions, Source, table
from mahn.readers.common import INTERACTION_SCHEMA

HM_OPTIONS = ReaderOptions(user_col="customer_id", item_col="article_id", time_col="t_dat",
                           title_col="prod_name", text_cols=("detail_desc",),
                           image_pattern="images/{key:.3}/{key}.jpg")


def collect(source: Source) -> pl.DataFrame:
    chunks = list(source.interactions)
    for chunk in chunks:
        assert chunk.schema == pl.Schema(INTERACTION_SCHEMA)
    return pl.concat(chunks)


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def utc(*parts: int) -> int:
    return int(datetime(*parts, tzinfo=UTC).timestamp())


# --- amazon2014 ---


def test_amazon2014_real_reviews(shared_data):
    path = shared_data / "amazon2014-phones" / "reviews_sample_5.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    source = READERS["amazon2014"](path)
    rows = collect(source)
    assert len(records) > 4000 and rows.height == len(records)
    assert rows.rows() == [(r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in records]
    assert source.has_time and source.files == [path] and source.items is None


META_2014 = """\
{'asin': 'B001', 'title': 'Phone Case', 'imUrl': 'http://ecx.images-amazon.com/images/I/41a.jpg', \
'categories': [['Cell Phones & Accessories', 'Cases'], ['Electronics']], 'price': 9.99, \
'brand': "O'Neill", 'description': 'A sturdy case.', 'salesRank': {'Electronics': 12}, \
'related': {'also_bought': ['B002', 'B003']}}
{'asin': 'B002', 'imUrl': 'http://ecx.images-amazon.com/images/I/51b.jpg', 'categories': [['Cell Phones']]}
{"asin": "B003", "title": "  ", "description": "strict JSON works too", "price": 5}
{'asin': 'B001', 'title': 'a later duplicate is ignored'}
"""


def test_amazon2014_metadata_python_literals(tmp_path):
    reviews = write(tmp_path / "reviews.json", "\n".join(json.dumps(r) for r in [
        {"reviewerID": "U1", "asin": "B001", "unixReviewTime": 1400630400},
        {"reviewerID": "U2", "asin": "B002", "reviewTime": "05 21, 2014"},
    ]) + "\n")
    meta = write(tmp_path / "meta.json", META_2014)
    source = READERS["amazon2014"](reviews, items=meta)
    assert collect(source).rows() == [("U1", "B001", 1400630400), ("U2", "B002", utc(2014, 5, 21))]
    items = source.items
    assert items["item"].to_list() == ["B001", "B002", "B003"]
    assert items["title"].to_list() == ["Phone Case", None, None]  # blank title is missing
    assert items["text"].to_list() == ["A sturdy case.", None, "strict JSON works too"]
    assert items["image"].to_list()[:2] == ["http://ecx.images-amazon.com/images/I/41a.jpg",
                                            "http://ecx.images-amazon.com/images/I/51b.jpg"]
    assert items["brand"].to_list() == ["O'Neill", None, None]
    assert items["categories"].to_list()[0] == [["Cell Phones & Accessories", "Cases"], ["Electronics"]]
    assert items["price"].to_list() == [9.99, None, 5.0]
    assert source.files == [reviews, meta]


def test_amazon2014_never_evaluates_code(tmp_path):
    reviews = write(tmp_path / "r.json", '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n')
    meta = write(tmp_path / "meta.json", "{'asin': __import__('os').getcwd()}\n")
    with pytest.raises(DataError, match=r"meta.json:1: malformed record"):
        READERS["amazon2014"](reviews, items=meta)


# --- amazon2018 ---


def test_amazon2018_reviews_and_metadata(tmp_path):
    reviews = write(tmp_path / "Musical_Instruments.json", "\n".join(json.dumps(r) for r in [
        {"overall": 5.0, "vote": "2", "verified": True, "reviewTime": "11 3, 2014", "reviewerID": "A1",
         "asin": "0006428320", "style": {"Format:": " Paperback"}, "unixReviewTime": 1414972800,
         "image": ["https://images-na.ssl-images-amazon.com/images/I/71x.jpg"]},
        {"overall": 4.0, "reviewerID": "A2", "asin": "0014072149", "unixReviewTime": 1395878400},
    ]) + "\n")
    meta = write(tmp_path / "meta_Musical_Instruments.json", "\n".join(json.dumps(r) for r in [
        {"asin": "0006428320", "title": "Six Sonatas For Two Flutes", "description": ["First part.", "Second."],
         "brand": "Dover", "category": ["Musical Instruments", "Flutes"], "price": "$6.95",
         "imageURL": ["https://images-na.ssl-images-amazon.com/images/I/small.jpg"],
         "imageURLHighRes": ["https://images-na.ssl-images-amazon.com/images/I/large.jpg"],
         "feature": ["Paperback", "64 pages"]},
        {"asin": "0014072149", "title": "Double Concerto", "description": [], "imageURL": ["https://x/y.jpg"],
         "imageURLHighRes": []},
        {"asin": "0041291905", "title": "Hal Leonard", "imageURL": []},
    ]) + "\n")
    source = READERS["amazon2018"](reviews, items=meta)
    assert collect(source).rows() == [("A1", "0006428320", 1414972800), ("A2", "0014072149", 1395878400)]
    items = source.items
    assert items["item"].to_list() == ["0006428320", "0014072149", "0041291905"]
    assert items["text"].to_list() == ["First part. Second.", None, None]
    assert items["image"].to_list() == ["https://images-na.ssl-images-amazon.com/images/I/large.jpg",
                                        "https://x/y.jpg", None]
    assert items["category"].to_list()[0] == ["Musical Instruments", "Flutes"]
    assert items["price"].to_list() == ["$6.95", None, None]
    assert items["feature"].to_list()[0] == ["Paperback", "64 pages"]


# --- recbole ---


def test_recbole_inter_with_sibling_item_file(tmp_path):
    folder = tmp_path / "ml-mini"
    folder.mkdir()
    write(folder / "ml-mini.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          "196\t242\t3\t881250949\n186\t302\t3\t891717742.0\n196\t377\t1\t878887116.9\n")
    write(folder / "ml-mini.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
          "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n")
    source = READERS["recbole"](folder)  # the dataset folder works as well as the .inter file
    assert collect(source).rows() == [("196", "242", 881250949), ("186", "302", 891717742),
                                      ("196", "377", 878887116)]
    assert source.has_time and source.files == [folder / "ml-mini.inter", folder / "ml-mini.item"]
    items = source.items
    assert items["title"].to_list() == ["Kolya", "L.A. Confidential"]
    assert items["release_year"].to_list() == ["1996", "1997"]
    assert items["class"].to_list() == [["Comedy"], ["Crime", "Film-Noir", "Mystery", "Thriller"]]


def test_recbole_without_timestamp_and_bad_lines(tmp_path):
    inter = write(tmp_path / "d.inter", "user_id:token\titem_id:token\nu1\ti1\nu1\ti2\n")
    source = READERS["recbole"](inter)
    assert collect(source)["timestamp"].to_list() == [None, None] and not source.has_time
    assert source.items is None
    bad = write(tmp_path / "e.inter", "user_id:token\titem_id:token\nu1\ti1\nu2 i2\n")
    with pytest.raises(DataError, match=r"e.inter:3: expected 2 tab-separated fields, found 1"):
        collect(READERS["recbole"](bad))
    header = write(tmp_path / "f.inter", "uid:token\titem_id:token\nu1\ti1\n")
    with pytest.raises(DataError, match=r"f.inter:1: no field 'user_id' in the header \(fields: uid, item_id\)"):
        READERS["recbole"](header)
    untyped = write(tmp_path / "g.inter", "user_id\titem_id\nu1\ti1\n")
    with pytest.raises(DataError, match=r"g.inter:1: header field 'user_id' is not 'name:type'"):
        READERS["recbole"](untyped)
    bad_time = write(tmp_path / "h.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\ti\tsoon\n")
    with pytest.raises(DataError, match=r"h.inter: cannot read 'soon' in time column 'timestamp' in data row 1"):
        collect(READERS["recbole"](bad_time))


# --- csv / parquet ---


def test_csv_hm_sample(shared_data):
    folder = shared_data / "hm-sample"
    source = READERS["csv"](folder / "transactions.csv", items=folder / "articles.csv", options=HM_OPTIONS)
    rows = collect(source)
    raw = pl.read_csv(folder / "transactions.csv", infer_schema=False)
    assert rows.height == raw.height
    assert rows["item"].to_list() == raw["article_id"].to_list()  # strings, leading zeros kept, file order
    assert rows["item"][0] == "0266875001" and rows["timestamp"][0] == utc(2018, 9, 20)
    assert rows["timestamp"].null_count() == 0 and source.has_time
    items = source.items
    assert items.height == 4116 and items["item"].str.starts_with("0").all()
    assert items["title"].null_count() == 0 and items["text"].null_count() < items.height
    images = items["image"].drop_nulls().to_list()
    assert len(images) == 4116 and all(os.path.isabs(p) and os.path.isfile(p) for p in images)
    assert images[0].endswith(f"images/{items['item'][0][:3]}/{items['item'][0]}.jpg")
    assert source.warnings == [] and source.files == [folder / "transactions.csv", folder / "articles.csv"]


def test_csv_times_in_every_accepted_form(tmp_path):
    header = "user,item,when\n"
    cases = {
        "1400630400": 1400630400,
        "2018-09-20": utc(2018, 9, 20),
        "2018-09-20 10:30:00": utc(2018, 9, 20, 10, 30),
        "2018-09-20T10:30:00": utc(2018, 9, 20, 10, 30),
    }
    for n, (text, expected) in enumerate(cases.items()):
        path = write(tmp_path / f"t{n}.csv", f"{header}u,i,{text}\nu,j,{text}\n")
        rows = collect(READERS["csv"](path, options=ReaderOptions(time_col="when")))
        assert rows["timestamp"].to_list() == [expected, expected], text
    path = write(tmp_path / "f.csv", f"{header}u,i,20/09/2018 10:30\n")
    rows = collect(READERS["csv"](path, options=ReaderOptions(time_col="when", time_format="%d/%m/%Y %H:%M")))
    assert rows["timestamp"].to_list() == [utc(2018, 9, 20, 10, 30)]
    bad = write(tmp_path / "bad.csv", f"{header}u,i,2018-09-20\nu,j,next tuesday\n")
    with pytest.raises(DataError, match=r"bad.csv: cannot read 'next tuesday' in time column 'when' in data row 2"):
        collect(READERS["csv"](bad, options=ReaderOptions(time_col="when")))


def test_csv_without_time_keeps_file_order_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "CHUNK_ROWS", 7)
    lines = [f"{n % 5:03d},{(n * 7) % 11:04d}" for n in range(40)]
    path = write(tmp_path / "plain.csv", "user,item\n" + "\n".join(lines) + "\n")
    source = READERS["csv"](path)
    chunks = list(source.interactions)
    assert len(chunks) > 1
    rows = pl.concat(chunks)
    assert [f"{u},{i}" for u, i, _ in rows.rows()] == lines
    assert rows["timestamp"].null_count() == 40 and not source.has_time
    late = write(tmp_path / "late.csv", "user,item\n" + "\n".join(lines[:30]) + "\n,0001\n")
    with pytest.raises(DataError, match=r"late.csv: empty 'user' in data row 31"):
        collect(READERS["csv"](late))


def test_parquet_tables_with_image_column(tmp_path):
    (tmp_path / "img").mkdir()
    write(tmp_path / "img" / "a.jpg", b"\xff\xd8")
    pl.DataFrame({"uid": [1, 2, 1], "sku": ["007", "008", "009"],
                  "ts": [datetime(2020, 1, 1), datetime(2020, 1, 2), datetime(2020, 1, 3)]}
                 ).write_parquet(tmp_path / "inter.parquet")
    pl.DataFrame({"sku": ["007", "008", "009"], "name": ["A", "B", ""], "colour": ["red", None, "blue"],
                  "material": ["wool", "silk", None], "photo": ["img/a.jpg", "img/missing.jpg", "https://x/c.jpg"]}
                 ).write_parquet(tmp_path / "items.parquet")
    options = ReaderOptions(user_col="uid", item_col="sku", time_col="ts", title_col="name",
                            text_cols=("colour", "material"), image_col="photo")
    source = READERS["csv"](tmp_path / "inter.parquet", items=tmp_path / "items.parquet", options=options)
    assert collect(source).rows() == [("1", "007", utc(2020, 1, 1)), ("2", "008", utc(2020, 1, 2)),
                                      ("1", "009", utc(2020, 1, 3))]
    items = source.items
    assert items.columns[:4] == ["item", "title", "text", "image"]
    assert items["title"].to_list() == ["A", "B", None]
    assert items["text"].to_list() == ["red. wool", "silk", "blue"]
    assert items["image"].to_list() == [str(tmp_path / "img" / "a.jpg"), None, "https://x/c.jpg"]
    assert len(source.warnings) == 1 and source.warnings[0].startswith("1 of 3 items name an image file")


def test_image_root_and_bad_pattern(tmp_path):
    (tmp_path / "photos").mkdir()
    write(tmp_path / "photos" / "x1.png", b"png")
    inter = write(tmp_path / "i.csv", "user,item\nu,x1\nu,x2\n")
    items = write(tmp_path / "items.csv", "item,title\nx1,One\nx2,Two\n")
    options = ReaderOptions(image_pattern="{key}.png", image_root=tmp_path / "photos")
    source = READERS["csv"](inter, items=items, options=options)
    assert source.items["image"].to_list() == [str(tmp_path / "photos" / "x1.png"), None]
    with pytest.raises(DataError, match=r"--image-pattern: bad image pattern '\{id\}.png'"):
        READERS["csv"](inter, items=items, options=ReaderOptions(image_pattern="{id}.png"))


def test_csv_missing_columns_are_named(tmp_path):
    inter = write(tmp_path / "i.csv", "customer,article,day\nu,i,2020-01-01\n")
    with pytest.raises(DataError, match=r"i.csv: no interactions column 'user' \(columns: customer, article, day\)"):
        READERS["csv"](inter)
    options = ReaderOptions(user_col="customer", item_col="article", time_col="date")
    with pytest.raises(DataError, match=r"no interactions column 'date' \(columns: customer, article, day\)"):
        READERS["csv"](inter, options=options)
    items = write(tmp_path / "items.csv", "article,name\ni,Thing\n")
    options = ReaderOptions(user_col="customer", item_col="article", title_col="title")
    with pytest.raises(DataError, match=r"items.csv: no items column 'title' \(columns: article, name\)"):
        READERS["csv"](inter, items=items, options=options)


def test_csv_malformed_tables_name_the_file(tmp_path):
    cases = {"ragged.csv": b"user,item\nu,i,extra\n", "quote.csv": b'user,item\nu,"unterminated\nv,j\n'}
    for name, body in cases.items():
        with pytest.raises(DataError, match=rf"{name}: cannot parse the table \(.+\)"):
            collect(READERS["csv"](write(tmp_path / name, body)))
    with pytest.raises(DataError, match=r"latin1.csv:2: not UTF-8 text \(invalid continuation byte at byte 1 "):
        collect(READERS["csv"](write(tmp_path / "latin1.csv", b"user,item\n\xe9t\xe9,i\n")))
    missing_time = write(tmp_path / "t.csv", "user,item,t\nu,i,1\nv,j,\n")
    with pytest.raises(DataError, match=r"t.csv: empty time column 't' in data row 2"):
        collect(READERS["csv"](missing_time, options=ReaderOptions(time_col="t")))


# --- sequences ---


def test_sequences_with_office_items(shared_data):
    folder = shared_data / "amazon2014-office"
    source = READERS["sequences"](folder / "user_sequence.txt", items=folder / "items.jsonl")
    rows = collect(source)
    first = (folder / "user_sequence.txt").read_text().split("\n", 1)[0].split()
    assert rows.head(len(first) - 1).rows() == [(first[0], item, n) for n, item in enumerate(first[1:])]
    items = source.items
    raw = [json.loads(line) for line in (folder / "items.jsonl").read_text().splitlines() if line.strip()]
    assert items.height == len(raw) == 2420
    assert items.columns == ["item", "title", "text", "brand"]  # description became the text
    assert items["text"][0] == raw[0]["description"].strip() and items["title"][0] == raw[0]["title"]
    assert not source.has_time


# --- text cleaning: every reader's titles and texts go through mahn.text.clean_text ---


def test_titles_and_texts_fold_whitespace_in_every_format(tmp_path):
    (tmp_path / "my  photos").mkdir()
    write(tmp_path / "my  photos" / "a.jpg", b"\xff\xd8")
    seq = write(tmp_path / "seq.txt", "u a b\n")
    items = write(tmp_path / "items.jsonl", "\n".join(json.dumps(r) for r in [
        {"item": "a", "title": " Six  Sonatas\nFor Two\tFlutes ", "description": ["First\n part.", "  "],
         "image": " my  photos/a.jpg "},
        {"item": "b", "title": True, "text": " \n "},
    ]) + "\n")
    source = READERS["sequences"](seq, items=items)
    assert source.items["title"].to_list() == ["Six Sonatas For Two Flutes", None]  # a boolean is no title
    assert source.items["text"].to_list() == ["First part.", None]
    assert source.items["image"].to_list() == [str(tmp_path / "my  photos" / "a.jpg"), None]  # a path as written

    inter = write(tmp_path / "i.csv", "user,item\nu,x1\n")
    table_items = write(tmp_path / "items.csv", 'item,title,colour,material\nx1,"Wool\n  Scarf",dark  red, wool.\n')
    options = ReaderOptions(text_cols=("colour", "material"))
    items = READERS["csv"](inter, items=table_items, options=options).items
    assert items["title"].to_list() == ["Wool Scarf"] and items["text"].to_list() == ["dark red. wool."]

    write(tmp_path / "r.inter", "user_id:token\titem_id:token\nu\t1\n")
    write(tmp_path / "r.item", "item_id:token\tmovie_title:token_seq\n1\t Toy  Story (1995) \n")
    assert READERS["recbole"](tmp_path / "r.inter").items["title"].to_list() == ["Toy Story (1995)"]


def test_amazon2014_metadata_bytes_and_tuples(tmp_path):
    reviews = write(tmp_path / "r.json", '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n')
    meta = write(tmp_path / "meta.json", "{'asin': 'A', 'title': b'Caf\\xc3\\xa9', 'brand': ('Acme', ' Inc ')}\n")
    items = READERS["amazon2014"](reviews, items=meta).items
    assert items["title"].to_list() == ["Café"] and items["brand"].to_list() == ["Acme Inc"]
    bad = write(tmp_path / "bad.json", "{'asin': 'A'}\n{'asin': 'B', 'title': b'\\xff'}\n")
    with pytest.raises(DataError, match=r"bad.json:2: not UTF-8 text"):
        READERS["amazon2014"](reviews, items=bad)


def test_amazon2014_metadata_surrogate_escapes(tmp_path):
    """Python 2 wrote an emoji as a \\u surrogate pair: joined into the character; half a pair is refused."""
    reviews = write(tmp_path / "r.json", '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n')
    meta = write(tmp_path / "meta.json", "{'asin': 'A', 'title': u'Smile \\ud83d\\ude00', 'brand': '\\\\ud800'}\n")
    items = READERS["amazon2014"](reviews, items=meta).items
    assert items["title"].to_list() == ["Smile \U0001f600"] and items["brand"].to_list() == ["\\ud800"]
    for half in ("\\ud83d", "\\ude00"):
        bad = write(tmp_path / "bad.json", f"{{'asin': 'A'}}\n{{'asin': 'B', 'categories': [['x{half}']]}}\n")
        with pytest.raises(DataError, match=r"bad.json:2: malformed record: a \\u escape is half of a UTF-16"):
            READERS["amazon2014"](reviews, items=bad)


# --- bad input shared by every reader ---

GOOD_INPUTS = {
    "sequences": ("seq.txt", "u1 a b c\n"),
    "amazon2014": ("reviews.json", '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n'),
    "amazon2018": ("reviews.json", '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n'),
    "recbole": ("x.inter", "user_id:token\titem_id:token\nu\ta\n"),
    "csv": ("x.csv", "user,item\nu,a\n"),
}


@pytest.mark.parametrize("fmt", sorted(GOOD_INPUTS))
def test_missing_and_empty_files(tmp_path, fmt):
    name = GOOD_INPUTS[fmt][0]
    with pytest.raises(DataError, match="file not found"):
        collect(READERS[fmt](tmp_path / name))
    empty = write(tmp_path / name, "")
    with pytest.raises(DataError, match="file is empty"):
        collect(READERS[fmt](empty))


TRUNCATED_BODIES = {
    "sequences": lambda n: f"u{n} a{n} b{n}\n",
    "amazon2014": lambda n: json.dumps({"reviewerID": f"U{n}", "asin": f"A{n}", "unixReviewTime": n}) + "\n",
    "amazon2018": lambda n: json.dumps({"reviewerID": f"U{n}", "asin": f"A{n}", "unixReviewTime": n}) + "\n",
    "recbole": lambda n: "user_id:token\titem_id:token\n" if n == 0 else f"u{n}\ta{n}\n",
}


@pytest.mark.parametrize("fmt", sorted(TRUNCATED_BODIES))
def test_truncated_gzip(tmp_path, fmt):
    body = "".join(map(TRUNCATED_BODIES[fmt], range(5000)))
    compressed = gzip.compress(body.encode())
    path = write(tmp_path / f"{GOOD_INPUTS[fmt][0]}.gz", compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"\.gz: cannot read the file after line \d+"):
        collect(READERS[fmt](path))


def test_truncated_gzip_csv(tmp_path):
    body = "user,item\n" + "".join(f"u{n},i{n}\n" for n in range(5000))
    path = write(tmp_path / "x.csv.gz", gzip.compress(body.encode())[:200])
    with pytest.raises(DataError, match=r"x.csv.gz: cannot"):
        collect(READERS["csv"](path))


@pytest.mark.parametrize("fmt", ["amazon2014", "amazon2018"])
def test_amazon_malformed_line_and_missing_fields(tmp_path, fmt):
    good = '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n'
    path = write(tmp_path / "r.json", good + good + '{"reviewerID": "U", "asin": \n')
    with pytest.raises(DataError, match=r"r.json:3: malformed JSON"):
        collect(READERS[fmt](path))
    path = write(tmp_path / "s.json", good + '{"reviewerID": "U", "unixReviewTime": 5}\n')
    with pytest.raises(DataError, match=r"s.json:2: missing field 'asin'"):
        collect(READERS[fmt](path))
    path = write(tmp_path / "t.json", good + '{"reviewerID": "U", "asin": "B"}\n')
    with pytest.raises(DataError, match=r"t.json:2: missing field 'unixReviewTime'"):
        collect(READERS[fmt](path))
    path = write(tmp_path / "u.json", good + '{"reviewerID": ["U"], "asin": "B", "unixReviewTime": 5}\n')
    with pytest.raises(DataError, match=r"u.json:2: field 'reviewerID' must be a string"):
        collect(READERS[fmt](path))
    meta = write(tmp_path / "meta.json", "{'asin': 'A'}\n{'title': 'no key'}\n")
    with pytest.raises(DataError, match=r"meta.json:2: missing field 'asin'"):
        READERS[fmt](path, items=meta)


def test_items_jsonl_missing_key(tmp_path):
    seq = write(tmp_path / "seq.txt", "u a b\n")
    items = write(tmp_path / "items.jsonl", '{"item": "a"}\n{"title": "b"}\n')
    with pytest.raises(DataError, match=r"items.jsonl:2: missing field 'item'"):
        READERS["sequences"](seq, items=items)


# --- fuzz: any bytes either parse or raise DataError ---

STRUCTURE = st.sampled_from(list('{}[]"\':,\t\n .-0123456789aAuUeEtrn') + [
    "reviewerID", "asin", "unixReviewTime", "reviewTime", "title", "imUrl", "description", "item", "user",
    "categories", "price", "imageURLHighRes", "null", "true", ":token", ":float", ":token_seq", "\\u00e9",
    "2018-09-20", "1e999", "2" * 25, "\x00", "é"])
FUZZ = st.one_of(
    st.binary(max_size=300),
    st.lists(STRUCTURE, max_size=60).map(lambda parts: "".join(parts).encode()),
)
PREFIXES = {
    "sequences": "",
    "amazon2014": '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n',
    "amazon2018": '{"reviewerID": "U", "asin": "A", "unixReviewTime": 1}\n',
    "recbole": "user_id:token\titem_id:token\ttimestamp:float\n",
    "csv": "user,item,time\n",
}
ITEM_PREFIXES = {
    "sequences": '{"item": "A", "title": "t"}\n',
    "amazon2014": "{'asin': 'A', 'title': 't'}\n",
    "amazon2018": '{"asin": "A", "title": "t"}\n',
    "recbole": "item_id:token\ttitle:token_seq\tprice:float\tv:float_seq\n",
    "csv": "item,title,text,image\n",
}
SUFFIXES = {"sequences": (".txt", ".jsonl"), "amazon2014": (".json", ".json"), "amazon2018": (".json", ".json"),
            "recbole": (".inter", ".item"), "csv": (".csv", ".csv")}


@pytest.mark.parametrize("fmt", sorted(READERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=FUZZ, item_body=FUZZ, use_prefix=st.booleans(), compress=st.booleans())
def test_fuzz_reader_raises_only_data_error(fmt, body, item_body, use_prefix, compress):
    with tempfile.TemporaryDirectory() as folder:
        inter_suffix, item_suffix = SUFFIXES[fmt]
        data = (PREFIXES[fmt].encode() if use_prefix else b"") + body
        items_data = (ITEM_PREFIXES[fmt].encode() if use_prefix else b"") + item_body
        if compress and fmt != "csv":
            data, inter_suffix = gzip.compress(data)[: max(10, len(data) // 2)], inter_suffix + ".gz"
        path = write(Path(folder) / f"data{inter_suffix}", data)
        items = write(Path(folder) / f"items{item_suffix}", items_data)
        options = ReaderOptions(time_col="time") if fmt == "csv" else None
        try:
            source = READERS[fmt](path, items=items, options=options)
            rows = collect(source)
        except DataError:
            return
        assert rows.height > 0
        assert source.items is None or source.items["item"].is_unique().all()


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/hostname", "photos/../../outside.png",
                                  "photos/link.png"])
def test_image_paths_that_leave_the_image_folder_are_refused(tmp_path, path):
    """An items file must not make mahn open files it was not pointed at (the CLI and `mahn features` alike)."""
    from typer.testing import CliRunner

    from mahn.cli import app

    data = tmp_path / "data"
    data.mkdir()
    (data / "photos").mkdir()
    write(tmp_path / "outside.png", b"png")
    os.symlink(tmp_path / "outside.png", data / "photos" / "link.png")
    inter = write(data / "i.csv", "user,item\nu,x1\nu,x2\nu,x3\n")
    items = write(data / "items.csv", f"item,title,image\nx1,One,\nx2,Two,{path}\nx3,Three,\n")
    with pytest.raises(DataError, match=r"items.csv: item 'x2': image .* leads out of the image folder"):
        READERS["csv"](inter, items=items)
    result = CliRunner().invoke(app, ["prepare", str(inter), "--format", "csv", "--items", str(items),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and not (tmp_path / "out").exists()
    assert "--images-anywhere" in str(result.exception)
    allowed = READERS["csv"](inter, items=items, options=ReaderOptions(images_anywhere=True))
    # with --images-anywhere the path is kept when the file is there (and dropped as missing when it is not)
    kept, meant = allowed.items["image"].to_list()[1], data / path  # a relative path is read from the items' folder
    if meant.is_file():
        assert kept is not None and os.path.samefile(kept, meant), kept
    else:
        assert kept is None, kept
