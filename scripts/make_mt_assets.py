#!/usr/bin/env python3
"""Writes assets/mt/{tatoeba-en-ro/train.jsonl, newstest2016-en-ro/test.jsonl} from
/work/shared/data/mt (see assets/mt/SOURCE.md). Deterministic, Python stdlib only."""
import json
import pathlib
import sys

src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/mt")
out = pathlib.Path(__file__).resolve().parent.parent / "assets" / "mt"


def pairs(en, ro):
    e = (src / en).read_text(encoding="utf-8").split("\n")
    r = (src / ro).read_text(encoding="utf-8").split("\n")
    assert len(e) == len(r), (en, ro)
    return [(a.strip(), b.strip()) for a, b in zip(e, r) if a.strip() and b.strip()]


def write(rel, rows):
    p = out / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        for a, b in rows:
            f.write(json.dumps({"source": a, "target": b}, ensure_ascii=False) + "\n")


write("tatoeba-en-ro/train.jsonl",
      pairs("tatoeba-eng-ron/tatoeba-test-v2021-03-30.eng", "tatoeba-eng-ron/tatoeba-test-v2021-03-30.ron")[:2000])
write("newstest2016-en-ro/test.jsonl", pairs("wmt16-en-ro/newstest2016.en", "wmt16-en-ro/newstest2016.ro")[:200])
