#!/usr/bin/env python3
"""Derives the small data assets under assets/ from the staged copies in /work/shared/data.

  python3 scripts/make_e2e_assets.py [--src /work/shared/data] [--out assets]

Writes (deterministic; Python standard library only):
  assets/e2e/train.jsonl       {"prompt", "completion"}                ~2,000 rows
  assets/e2e/validation.jsonl  {"prompt", "completion"}                ~200 rows
  assets/e2e/test.jsonl        {"prompt", "completion", "references"}  100 rows, one per MR
  assets/alpaca/alpaca_gpt4_sample.jsonl  {"instruction", "input", "output"}  200 rows
  assets/tinystories/valid_sample.txt     the first ~300 lines of the TinyStories excerpt

E2E source lines are "MR||reference"; the same MR repeats on consecutive lines, once per
human reference. prompt = MR + "\\n" (MR text unchanged), completion = one reference (trailing
whitespace stripped). Train and validation come from valid.txt with disjoint MRs (every 10th MR,
in file order, is validation); at most 4 references per MR are used as rows. test.jsonl holds
the first 100 MRs of test.txt, each with ALL its references (for multi-reference BLEU).
"""
import argparse
import json
import os


def read_groups(path):
    """[(mr, [refs...])] in file order, grouping consecutive lines with the same MR."""
    groups = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if "||" not in line:
                raise SystemExit(f"{path}:{n}: expected 'MR||reference'")
            mr, ref = line.split("||", 1)
            mr, ref = mr.strip(), ref.strip()
            if groups and groups[-1][0] == mr:
                groups[-1][1].append(ref)
            else:
                groups.append((mr, [ref]))
    return groups


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"{path}: {len(rows)} rows, {os.path.getsize(path)} bytes")


def e2e(src, out, per_mr=4, n_test=100):
    valid = read_groups(os.path.join(src, "e2e", "valid.txt"))
    train_rows, val_rows = [], []
    for i, (mr, refs) in enumerate(valid):
        rows = [{"prompt": mr + "\n", "completion": r} for r in refs[:per_mr]]
        (val_rows if i % 10 == 0 else train_rows).extend(rows)
    test = read_groups(os.path.join(src, "e2e", "test.txt"))[:n_test]
    test_rows = [{"prompt": mr + "\n", "completion": refs[0], "references": refs} for mr, refs in test]
    write_jsonl(os.path.join(out, "e2e", "train.jsonl"), train_rows)
    write_jsonl(os.path.join(out, "e2e", "validation.jsonl"), val_rows)
    write_jsonl(os.path.join(out, "e2e", "test.jsonl"), test_rows)


def alpaca(src, out, n=200):
    with open(os.path.join(src, "instruct", "alpaca-gpt4-en-demo", "alpaca_en_demo.json"), encoding="utf-8") as f:
        data = json.load(f)
    rows = [{"instruction": d["instruction"], "input": d.get("input", ""), "output": d["output"]} for d in data[:n]]
    write_jsonl(os.path.join(out, "alpaca", "alpaca_gpt4_sample.jsonl"), rows)


def tinystories(src, out, min_lines=300):
    with open(os.path.join(src, "lm", "tinystories-valid-excerpt", "tinystories_val.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    # Cut at the first blank line after min_lines so the sample ends between paragraphs.
    end = min_lines
    while end < len(lines) and lines[end].strip():
        end += 1
    path = os.path.join(out, "tinystories", "valid_sample.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines[:end]).rstrip("\n") + "\n")
    print(f"{path}: {end} lines, {os.path.getsize(path)} bytes")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="/work/shared/data")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets"))
    a = ap.parse_args()
    e2e(a.src, a.out)
    alpaca(a.src, a.out)
    tinystories(a.src, a.out)


if __name__ == "__main__":
    main()
